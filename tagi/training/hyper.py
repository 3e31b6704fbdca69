"""Shared by the stages that train the hypernetwork (pretrain, finetune): the TAGI model and how
the student generates on validation or test tasks (hypernetwork once per task, merged weights per task)."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import Tensor

from tagi.inference.cache import TaskCache
from tagi.eval.cost import CostTally, task_cost
from tagi.modeling.model import TAGIModel
from tagi.training.config import Architecture, Backbone, Generation, Optimization
from tagi.training.stage import GenerativeStage, group_rows


class HyperStage(GenerativeStage):
    def __init__(
        self,
        backbone: Backbone,
        architecture: Architecture,
        tokenizer: str,
        optimization: Optimization,
        generation: Generation,
        adapter_only: bool = False,
        report_cost: bool = True,
    ):
        """`adapter_only`: evaluation ablation — the student reduced to backbone + generated LoRA (what
        `tagi adapter` exports). Evaluating with other instructions is the data's `instruction_control`."""
        super().__init__(backbone, tokenizer, optimization, generation)
        self.architecture = architecture
        self.adapter_only = adapter_only
        self.report_cost = report_cost  # test: inference FLOPs/time vs instruction concatenation (tagi.eval.cost)
        self.cost_tally: CostTally | None = None
        self.model = TAGIModel(backbone.load(len(self.tokenizer)), **asdict(architecture))
        self.task_cache = TaskCache(self.model.encode_task)

    def describe(self) -> dict:
        return {**super().describe(), "architecture": asdict(self.architecture)}

    def results_meta(self) -> dict:
        meta = {**super().results_meta(), "adapter_only": self.adapter_only,
                "task_cache": {"hypernetwork_runs": self.task_cache.misses, "reuses": self.task_cache.hits}}
        if self.cost_tally is not None and self.cost_tally.examples:
            meta["inference_cost"] = self.cost_tally.summary()
        return meta

    def results_markdown(self) -> str:
        return self.cost_tally.markdown() if self.cost_tally is not None and self.cost_tally.examples else ""

    def test_step(self, batch: dict, batch_idx: int) -> list[str]:
        texts = super().test_step(batch, batch_idx)
        if self.report_cost and "concat_input_ids" in batch:
            self._tally_cost(batch)
        return texts

    def _tally_cost(self, batch: dict) -> None:
        """Per task in the batch: TAGI (instruction once + these inputs) vs the concatenated inputs."""
        if self.cost_tally is None:
            self.cost_tally = CostTally()
        for task_row, rows in group_rows(batch["task_index"]):
            ids, mask = self._instruction(batch, task_row)
            cost = task_cost(self.model, (ids[mask.bool()][None], mask[mask.bool()][None]),
                             (batch["input_ids"][rows], batch["attention_mask"][rows]),
                             (batch["concat_input_ids"][rows], batch["concat_attention_mask"][rows]), batch["labels"][rows],
                             batch_size=len(rows))
            self.cost_tally.add(batch["task_names"][int(rows[0])], cost)

    def student_outputs(self, batch: dict):
        """Encode each distinct instruction of the batch once, then run every row with its task's LoRA."""
        task = self.model.encode_task(batch["instruction_ids"], batch["instruction_mask"])
        outputs = self.model(
            task, batch["input_ids"], batch["attention_mask"], labels=batch["labels"], task_index=batch["task_index"]
        )
        return task, outputs

    def generate_texts(self, batch: dict) -> list[str]:
        """Rows grouped by task; each task's encoding comes from the cache (hypernetwork once per task)."""
        texts: list[str] = [""] * batch["input_ids"].shape[0]
        for task_row, rows in group_rows(batch["task_index"]):
            task = self.task_cache.get(*self._instruction(batch, task_row))
            sequences = self.model.generate(
                task, batch["input_ids"][rows], batch["attention_mask"][rows], merge=True, lora_only=self.adapter_only,
                **self.generate_kwargs()
            )
            for row, text in zip(rows.tolist(), self.decode(sequences)):
                texts[row] = text
        return texts

    def option_logits(self, batch: dict, rows: Tensor, labels: Tensor) -> Tensor:
        tasks = [self.task_cache.get(*self._instruction(batch, t)) for t in range(batch["instruction_ids"].shape[0])]
        logits = torch.empty(len(rows), labels.shape[1], self.model.backbone.config.vocab_size, device=self.device)
        for task_row, members in group_rows(batch["task_index"][rows]):  # one task at a time: its cached encoding
            picked = rows[members]
            logits[members] = self.model(tasks[task_row], batch["input_ids"][picked], batch["attention_mask"][picked],
                                         labels=labels[members], merge=True, lora_only=self.adapter_only).logits
        return logits

    def _instruction(self, batch: dict, task_row: int) -> tuple[Tensor, Tensor]:
        """One task's instruction (L,) ids and mask."""
        return batch["instruction_ids"][task_row], batch["instruction_mask"][task_row]

    def _clear_cache(self) -> None:
        self.task_cache.clear()  # weights changed since the last evaluation

    def on_validation_epoch_start(self) -> None:
        self._clear_cache()

    def on_test_epoch_start(self) -> None:
        self._clear_cache()  # kept after the epoch: results.json (written on test end) counts its runs
        self.cost_tally = None

    def on_predict_epoch_start(self) -> None:
        self._clear_cache()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._clear_cache()
