"""How a student answers: each distinct instruction goes through the hypernetwork once (cached), then
that task's inputs run with its LoRA merged into the weights.

`Student` (one instruction, text in and out) and the student stages' validation and test (batches
that mix tasks) both generate through `StudentRunner.generate_task`, so what `tagi test` scores is
what `Student.generate` serves. Lightning-free.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tagi.data.collate import answer_by_group, group_rows
from tagi.inference.cache import TaskCache
from tagi.modeling.model import TAGIModel, TaskEncoding


class StudentRunner:
    def __init__(self, model: TAGIModel, tokenizer, cache_size: int = 1024):
        self.model, self.tokenizer = model, tokenizer
        self.cache = TaskCache(model.encode_task, cache_size)  # clear it whenever the weights change

    def encode(self, ids: Tensor, mask: Tensor) -> TaskEncoding:
        """One instruction's (L,) ids and mask → its encoding; the hypernetwork runs on a cache miss only."""
        return self.cache.get(ids, mask)

    def outputs(self, batch: dict):
        """The training forward: every distinct instruction of the batch encoded (no cache: the weights change
        every step), every row run with its task's LoRA. Returns the encoding (N tasks) and the outputs."""
        task = self.model.encode_task(batch["instruction_ids"], batch["instruction_mask"])
        outputs = self.model(
            task, batch["input_ids"], batch["attention_mask"], labels=batch["labels"], task_index=batch["task_index"]
        )
        return task, outputs

    @torch.no_grad()
    def generate_task(self, task: TaskEncoding, input_ids: Tensor, attention_mask: Tensor, lora_only: bool = False,
                      **generate_kwargs) -> list[str]:
        """Texts for (B, T) inputs of one encoded task, its LoRA merged. `lora_only`: backbone + generated LoRA
        alone (no fusion, no FiD), what an exported PEFT adapter computes."""
        sequences = self.model.generate(task, input_ids, attention_mask, merge=True, lora_only=lora_only, **generate_kwargs)
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    def generate(self, batch: dict, lora_only: bool = False, **generate_kwargs) -> list[str]:
        """One text per row of a batch that mixes tasks (`instruction_ids` (N, L), `task_index` (B,)), task by task."""
        def answer(task_row: int, rows: Tensor) -> list[str]:
            task = self.encode(batch["instruction_ids"][task_row], batch["instruction_mask"][task_row])
            return self.generate_task(task, batch["input_ids"][rows], batch["attention_mask"][rows], lora_only,
                                      **generate_kwargs)

        return answer_by_group(batch["task_index"], answer)

    def option_logits(self, batch: dict, rows: Tensor, labels: Tensor, lora_only: bool = False) -> Tensor:
        """Logits (len(rows), Y, V) of `labels` for the given batch rows, task by task with merged weights."""
        logits = torch.empty(len(rows), labels.shape[1], self.model.backbone.config.vocab_size, device=labels.device)
        for task_row, members in group_rows(batch["task_index"][rows]):
            task = self.encode(batch["instruction_ids"][task_row], batch["instruction_mask"][task_row])
            picked = rows[members]
            logits[members] = self.model(task, batch["input_ids"][picked], batch["attention_mask"][picked],
                                         labels=labels[members], merge=True, lora_only=lora_only).logits
        return logits
