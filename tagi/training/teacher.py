"""Stage 1: one LoRA teacher per task cluster, each trained on its own, as TAGI trains them (§3.2.2).

The clusters are trained one after another in one run: cluster 1's `trainer.max_steps` optimizer steps,
then cluster 2's, ... (`ClusterStepSampler` feeds single-cluster batches in that order). What makes a
cluster's teacher its own, bitwise the same whether or not other clusters are in the run:

    weights     one (A, B) pair of Parameters per cluster, initialised from a seed of its own
    optimizer   one AdamW over all of them, but torch keeps Adam's state (moments, step count) per
                Parameter and skips a Parameter without a gradient: only the cluster's own batches
                touch its moments, its bias correction and its weight decay
    schedule    warm-up and decay restart at every cluster (`restart_every`): step j of each cluster
                has the learning rate of step j of a run that trains it alone
    data        its batches come from a stream seeded by (seed, cluster name) alone
    dropout     re-seeded at every batch from (seed, cluster, its batch index, rank)

So `trainer.max_steps` is per cluster (TAGI Table 6: 10,000 steps per LoRA) and the run takes
clusters × max_steps steps; a killed run resumes at the cluster and step where it stopped
(the global step says which). The teachers sit on θ0 (`backbone`), or on `teacher_backbone` when it is
set (the paper's Tk-Instruct). At the end each cluster's LoRA is written as a PEFT adapter directory:

    <output_dir>/<cluster-slug>/{adapter_config.json, adapter_model.safetensors, meta.json}
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from torch import Tensor, nn

from tagi.data.collate import answer_by_group
from tagi.errors import ConfigurationError
from tagi.modeling.adapters import cluster_folders, save_adapter
from tagi.modeling.families import family_of
from tagi.modeling.lora import LoRAWeights, apply_lora, peft_init, site_shapes
from tagi.provenance import PROVENANCE_KEY
from tagi.training.config import Backbone, Generation, Optimization
from tagi.training.optim import optimizer_and_schedule, parameter_groups
from tagi.training.stage import Stage

log = logging.getLogger(__name__)


def cluster_seed(*parts: object) -> int:
    """A seed that depends on `parts` alone (Python's `hash` of a str changes between processes)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


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
        teacher_backbone: Backbone | None = None,
    ):
        """`backbone`: θ0 (the pipeline sets it for every stage). `teacher_backbone`: the model the teachers sit
        on when it is not θ0 (TAGI: Tk-Instruct); finetune then needs the same `teacher_backbone`."""
        super().__init__(teacher_backbone or backbone, tokenizer, optimization, generation)
        self.teacher_backbone = teacher_backbone
        self.backbone = self.backbone_spec.load(len(self.tokenizer)).requires_grad_(False)
        self.family = family_of(self.backbone)
        self.lora_rank, self.lora_alpha, self.output_dir = lora_rank, lora_alpha, Path(output_dir)
        self.site_names = self.family.site_names()
        # One Parameter per cluster, so each has its own optimizer state; built in setup once the clusters are known.
        self.lora_A: nn.ParameterList | None = None  # K × (S, r, in)
        self.lora_B: nn.ParameterList | None = None  # K × (S, out, r)
        self.steps_per_cluster: int | None = None  # trainer.max_steps as the config gives it (read once, at fit setup)

    # -- set-up: clusters, step budget, bank

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.trainer.datamodule
        self.clusters: dict[str, int] = dict(datamodule.clusters)
        self.cluster_tasks: dict[str, list[str]] = dict(datamodule.cluster_tasks)
        self.cluster_names = {index: name for name, index in self.clusters.items()}
        self.seed = datamodule.hparams.seed
        if stage == "fit":
            self._check_strategy()
            self._plan_steps()
        if self.lora_A is None:
            self._build_bank()

    def prepare(self, datamodule) -> None:
        """Before the fit writes anything (the CLI calls it): every cluster gets a folder of its own."""
        cluster_folders(datamodule.cluster_tasks)

    def _check_strategy(self) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, DeepSpeedStrategy):
            raise ConfigurationError(
                "trainer.strategy: the teacher stage does not run under DeepSpeed: ZeRO steps its optimizer over one "
                "flat buffer of every trained weight, so each cluster's LoRA would move on stale momentum at every "
                "other cluster's step. Use --trainer.strategy=ddp (several devices) or auto (one)")
        if isinstance(strategy, DDPStrategy):
            # Only the batch's cluster has gradients; DDP must not wait for the others' (it leaves them None).
            strategy._ddp_kwargs["find_unused_parameters"] = True

    def _plan_steps(self) -> None:
        """`trainer.max_steps` is each cluster's budget; the run is all train clusters' budgets end to end."""
        if self.steps_per_cluster is None:
            steps = self.trainer.max_steps
            if steps is None or steps <= 0:
                raise ConfigurationError(
                    f"trainer.max_steps: {steps}; the teacher stage needs a positive number, the optimizer steps of "
                    "each cluster's teacher (TAGI Table 6: 10000)")
            self.steps_per_cluster = steps
        self.trainer.fit_loop.epoch_loop.max_steps = self.steps_per_cluster * len(self.cluster_tasks)

    @property
    def batches_per_cluster(self) -> int:
        """Batches per cluster on each rank: its steps × gradient accumulation (what the data module feeds)."""
        return self.steps_per_cluster * self.trainer.accumulate_grad_batches

    def sites(self) -> list[nn.Linear]:
        return [self.backbone.get_submodule(name) for name in self.site_names]

    def _build_bank(self) -> None:
        """peft's init per cluster, from the cluster's own seed, so training starts at the backbone (B = 0)."""
        sites = self.sites()
        self.shapes = site_shapes(sites)
        if sorted(self.clusters.values()) != list(range(len(self.clusters))):
            raise ValueError(f"cluster ids must be 0..K-1, got {sorted(self.clusters.values())}")
        A, B = [], []
        for index in range(len(self.clusters)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cluster_seed(self.seed, self.cluster_names[index], "init"))
                a, b = peft_init(sites, 1, self.lora_rank)  # (1, S, r, in), (1, S, out, r)
            A.append(nn.Parameter(a[0]))
            B.append(nn.Parameter(b[0]))
        self.lora_A, self.lora_B = nn.ParameterList(A), nn.ParameterList(B)

    def cluster_lora(self, cluster: int) -> LoRAWeights:
        """One cluster's LoRA as a single row (A (1, S, r, in), B (1, S, out, r)): it broadcasts over a batch."""
        return LoRAWeights(self.lora_A[cluster].unsqueeze(0), self.lora_B[cluster].unsqueeze(0),
                           self.lora_alpha / self.lora_rank, self.shapes)

    def rows_lora(self, cluster_ids: Tensor) -> LoRAWeights:
        """The LoRA of each row's cluster (B, S, ...), stacking only the clusters the rows name."""
        present, row_of = cluster_ids.unique(return_inverse=True)  # (U,), (B,)
        A = torch.stack([self.lora_A[int(c)] for c in present])  # (U, S, r, in)
        B = torch.stack([self.lora_B[int(c)] for c in present])  # (U, S, out, r)
        return LoRAWeights(A, B, self.lora_alpha / self.lora_rank, self.shapes).select(row_of)

    # -- training

    def configure_optimizers(self):
        groups = parameter_groups(self, self.optimization)
        return optimizer_and_schedule(groups, self.optimization, self.trainer.max_steps, restart_every=self.steps_per_cluster)

    def training_step(self, batch: dict, batch_idx: int):
        cluster = self._batch_cluster(batch["cluster_ids"])
        self._seed_batch(cluster, batch_idx)
        with apply_lora(self.sites(), self.cluster_lora(cluster)):
            loss = self.family.answer_logits(self.backbone, batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        return self.training_loss({"ce": loss}, batch["input_ids"].shape[0])

    @staticmethod
    def _batch_cluster(cluster_ids: Tensor) -> int:
        cluster = int(cluster_ids[0])
        if bool((cluster_ids != cluster).any()):
            raise RuntimeError(f"a teacher training batch must hold one cluster, got {sorted(set(cluster_ids.tolist()))}")
        return cluster

    def _seed_batch(self, cluster: int, batch_idx: int) -> None:
        """Dropout's draws for this batch depend on (seed, cluster, the batch's index within the cluster, rank)
        only: not on other clusters' batches, nor on a validation in between (its loader draws from the global
        generator), and a resumed run draws what the killed one would have."""
        within = batch_idx % self.batches_per_cluster
        torch.manual_seed(cluster_seed(self.seed, self.cluster_names[cluster], within, self.global_rank))

    # -- evaluation

    def generate_texts(self, batch: dict) -> list[str]:
        def answer(cluster: int, rows: Tensor) -> list[str]:
            with torch.no_grad(), apply_lora(self.sites(), self.cluster_lora(cluster)):  # rows broadcast one LoRA
                return self.decode(self.family.generate(
                    batch["input_ids"][rows], batch["attention_mask"][rows], **self.generate_kwargs()))

        return answer_by_group(batch["cluster_ids"], answer)

    def option_logits(self, batch: dict, rows: Tensor, labels: Tensor) -> Tensor:
        with apply_lora(self.sites(), self.rows_lora(batch["cluster_ids"][rows])):
            return self.family.answer_logits(self.backbone, batch["input_ids"][rows], batch["attention_mask"][rows], labels).logits

    # -- artifacts

    def export(self, out_dir: Path) -> list[Path]:
        """One PEFT directory per cluster that has training tasks (`ExportArtifacts` calls it when the fit ends)."""
        written = []
        folders = cluster_folders(self.cluster_tasks)
        for name, tasks in sorted(self.cluster_tasks.items()):
            index = self.clusters[name]
            meta = dict(
                cluster=name,
                cluster_id=index,
                tasks=sorted(tasks),
                backbone=self.backbone_spec.record(),  # the model this LoRA sits on: θ0, or teacher_backbone
                teacher_backbone=self.teacher_backbone is not None,
                tokenizer=self.tokenizer_name,
                lora_rank=self.lora_rank,
                lora_alpha=self.lora_alpha,
                steps=self.steps_per_cluster,  # this teacher's own optimizer steps
                global_step=self.global_step,
                validation={key: value for key, value in self.last_scores.items() if key.endswith(f"/category/{name}") or "/" not in key},
            )
            written.append(save_adapter(out_dir / folders[name], self.cluster_lora(index), self.site_names, self.lora_alpha,
                                        self.backbone_spec.name, meta, self.family.peft_task_type))
        log.info("wrote %d teacher adapters to %s", len(set(written)), out_dir)
        return written

    def describe(self) -> dict:
        return {**super().describe(), "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "output_dir": str(self.output_dir),
                "teacher_backbone": self.teacher_backbone is not None, "steps_per_cluster": self.steps_per_cluster}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed fit must keep the per-cluster budget: the global step maps to (cluster, step) through it."""
        super().on_load_checkpoint(checkpoint)
        saved = (checkpoint.get(PROVENANCE_KEY) or {}).get("steps_per_cluster")
        if self._trainer is not None and self.trainer.state.fn == "fit" and saved is not None and saved != self.steps_per_cluster:
            raise ConfigurationError(
                f"trainer.max_steps: {self.steps_per_cluster} steps per cluster, but the checkpoint's run gave each cluster "
                f"{saved}; its global step would land on another cluster. Resume with --trainer.max_steps={saved}")
