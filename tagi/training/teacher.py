"""Stage 1: one LoRA teacher per task cluster, all trained in ONE run as a bank.

Every batch may mix clusters: row i runs the backbone with the LoRA of its cluster (the batched
per-example LoRA of `tagi.modeling.lora`), fed the instruction-concatenated (Tk-Instruct) input. At the end
each cluster's LoRA is written as a standard PEFT adapter directory, atomically:

    <output_dir>/<cluster-slug>/{adapter_config.json, adapter_model.safetensors, meta.json}
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from tagi.data.collate import answer_by_group
from tagi.modeling.adapters import cluster_folders, save_adapter
from tagi.modeling.families import family_of
from tagi.modeling.lora import LoRAWeights, apply_lora, peft_init, site_shapes
from tagi.training.config import Backbone, Generation, Optimization
from tagi.training.stage import Stage

log = logging.getLogger(__name__)


class TeacherModule(Stage):
    stage = "teacher"

    def __init__(
        self,
        backbone: Backbone = Backbone(),
        tokenizer: str = "byt5",
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        output_dir: str = "teachers/demo",
        optimization: Optimization = Optimization(),
        generation: Generation = Generation(),
    ):
        super().__init__(backbone, tokenizer, optimization, generation)
        self.backbone = backbone.load(len(self.tokenizer)).requires_grad_(False)
        self.family = family_of(self.backbone)
        self.lora_rank, self.lora_alpha, self.output_dir = lora_rank, lora_alpha, Path(output_dir)
        self.site_names = self.family.site_names()
        self.lora_A: nn.Parameter | None = None  # (K, S, r, in), built in setup once the clusters are known
        self.lora_B: nn.Parameter | None = None  # (K, S, out, r)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.trainer.datamodule
        self.clusters: dict[str, int] = dict(datamodule.clusters)
        self.cluster_tasks: dict[str, list[str]] = dict(datamodule.cluster_tasks)
        if self.lora_A is None:
            self._build_bank(len(self.clusters))

    def prepare(self, datamodule) -> None:
        """Before the fit writes anything (the CLI calls it): every cluster gets a folder of its own."""
        cluster_folders(datamodule.cluster_tasks)

    def sites(self) -> list[nn.Linear]:
        return [self.backbone.get_submodule(name) for name in self.site_names]

    def _build_bank(self, num_clusters: int) -> None:
        """peft's init, so training starts at θ0: A (K, S, r, in), B (K, S, out, r) = 0."""
        self.shapes = site_shapes(self.sites())
        A, B = peft_init(self.sites(), num_clusters, self.lora_rank)
        self.lora_A, self.lora_B = nn.Parameter(A), nn.Parameter(B)

    def bank(self) -> LoRAWeights:
        return LoRAWeights(self.lora_A, self.lora_B, self.lora_alpha / self.lora_rank, self.shapes)

    def training_step(self, batch: dict, batch_idx: int):
        with apply_lora(self.sites(), self.bank().select(batch["cluster_ids"])):
            loss = self.family.answer_logits(self.backbone, batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        return self.training_loss({"ce": loss}, batch["input_ids"].shape[0])

    def generate_texts(self, batch: dict) -> list[str]:
        def answer(cluster: int, rows: torch.Tensor) -> list[str]:
            lora = self.bank().select(torch.tensor([cluster], device=self.device))
            with torch.no_grad(), apply_lora(self.sites(), lora):  # one cluster: rows broadcast one LoRA
                return self.decode(self.family.generate(
                    batch["input_ids"][rows], batch["attention_mask"][rows], **self.generate_kwargs()))

        return answer_by_group(batch["cluster_ids"], answer)

    def option_logits(self, batch: dict, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with apply_lora(self.sites(), self.bank().select(batch["cluster_ids"][rows])):
            return self.family.answer_logits(self.backbone, batch["input_ids"][rows], batch["attention_mask"][rows], labels).logits

    def export(self, out_dir: Path) -> list[Path]:
        """One PEFT directory per cluster that has training tasks (`ExportArtifacts` calls it when the fit ends)."""
        written = []
        bank = self.bank()
        folders = cluster_folders(self.cluster_tasks)
        for name, tasks in sorted(self.cluster_tasks.items()):
            index = self.clusters[name]
            meta = dict(
                cluster=name,
                cluster_id=index,
                tasks=sorted(tasks),
                backbone=self.backbone_spec.record(),
                tokenizer=self.tokenizer_name,
                lora_rank=self.lora_rank,
                lora_alpha=self.lora_alpha,
                global_step=self.global_step,
                validation={key: value for key, value in self.last_scores.items() if key.endswith(f"/category/{name}") or "/" not in key},
            )
            one = bank.select(torch.tensor([index], device=self.lora_A.device))
            written.append(save_adapter(out_dir / folders[name], one, self.site_names, self.lora_alpha, self.backbone_spec.name,
                                        meta, self.family.peft_task_type))
        log.info("wrote %d teacher adapters to %s", len(set(written)), out_dir)
        return written

    def describe(self) -> dict:
        return {**super().describe(), "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "output_dir": str(self.output_dir)}
