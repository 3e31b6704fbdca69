"""DeepSpeed with checkpoint folders that are never half written, and the same on CPU processes.

`DeepSpeedStrategy` is Lightning's, except that a save goes to a staging folder beside the target
and is renamed into place once every rank has written its shard. Lightning's writes the folder in
place under one tag: a run killed mid-save left a `last.ckpt` whose model and optimizer files came
from different steps, and `--ckpt_path last` resumed from it without a word (measured: a resumed
finetune run ended ~3e-3 away from the uninterrupted one, per weight).

`CPUDeepSpeedStrategy` is for tests and CPU-only users, not for speed. Lightning refuses any
accelerator but CUDA, yet DeepSpeed itself runs on CPU (its CPU accelerator, gloo for the
collectives when oneCCL is absent). This subclass lifts exactly Lightning's CUDA-only checks, so
ZeRO-2 (sharded optimizer state and gradients), its bf16 section and its checkpoint folders run, and
are tested, on a machine without a GPU:

    --trainer.strategy=deepspeed_cpu --trainer.accelerator=cpu --trainer.devices=2

(or `class_path: tagi.training.strategies.CPUDeepSpeedStrategy` with `init_args: {stage: 2}` in YAML;
`deepspeed_cpu_stage_1` for ZeRO-1).

On GPUs the same settings name `tagi.training.strategies.DeepSpeedStrategy`; everything else (configs,
checkpoints, the ZeRO folder given to `init_from`) is the same.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch import strategies
from lightning.pytorch.strategies import StrategyRegistry

from tagi.io import writing


class DeepSpeedStrategy(strategies.DeepSpeedStrategy):
    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        target = Path(self.broadcast(str(filepath)))
        staging = target.with_name(f".tmp-{target.name}")
        if self.is_global_zero and staging.exists():
            shutil.rmtree(staging)  # a save killed earlier
        self.barrier()
        with writing(target):  # a full disk: one error naming the checkpoint (the old folder is intact)
            super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier()  # every rank's shard is in the staging folder
        if self.is_global_zero:
            _replace_folder(target, staging)
        self.barrier()


def _replace_folder(target: Path, staging: Path) -> None:
    """`staging` takes `target`'s name. A folder cannot be renamed over a non-empty one, so the old one is
    moved aside first and removed after: a kill between the two renames leaves it beside, never a mix."""
    previous = target.with_name(f".old-{target.name}")
    if target.exists():
        if previous.exists():
            shutil.rmtree(previous)
        target.rename(previous)
    staging.rename(target)
    if previous.exists():
        shutil.rmtree(previous)


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    strategy_name = "deepspeed_cpu"

    def __init__(self, *args, process_group_backend: str | None = "gloo", **kwargs):
        super().__init__(*args, process_group_backend=process_group_backend, **kwargs)

    def setup_environment(self) -> None:
        strategies.DDPStrategy.setup_environment(self)  # the parent's, without its "only on CUDA GPUs" refusal

    def setup_distributed(self) -> None:
        # The parent's, without `_validate_device_index_selection` (CUDA device indices).
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        # DeepSpeed reads the device index of the root device for `device_rank`; a bare "cpu" has none.
        return torch.device("cpu", self.local_rank)


CPU_NAMES = {"deepspeed_cpu": 2, "deepspeed_cpu_stage_1": 1, "deepspeed_cpu_stage_2": 2}


def register(registry=StrategyRegistry) -> None:
    """`--trainer.strategy=deepspeed_cpu` (ZeRO-2) and `deepspeed_cpu_stage_{1,2}`, as Lightning names its own
    `deepspeed_stage_2`: a bare class path as a string is taken for a name and refused by Lightning."""
    for name, stage in CPU_NAMES.items():
        if name not in registry:
            registry.register(name, CPUDeepSpeedStrategy, description=f"DeepSpeed ZeRO-{stage} on CPU processes (gloo)",
                              stage=stage)


register()
