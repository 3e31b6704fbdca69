"""DeepSpeed on CPU processes: for tests and CPU-only users, not for speed.

Lightning's `DeepSpeedStrategy` refuses any accelerator but CUDA, yet DeepSpeed itself runs on CPU
(its CPU accelerator, gloo for the collectives when oneCCL is absent). This subclass lifts exactly
Lightning's CUDA-only checks, so ZeRO-2 (sharded optimizer state and gradients), its bf16 section and
its checkpoint *folders* run, and are tested, on a machine without a GPU:

    trainer:
      accelerator: cpu
      devices: 2
      strategy:
        class_path: tagi.training.strategies.CPUDeepSpeedStrategy
        init_args: {stage: 2, process_group_backend: gloo}

On GPUs use Lightning's own `DeepSpeedStrategy`; everything else (configs, checkpoints, the ZeRO folder
given to `init_from`) is the same.
"""

from __future__ import annotations

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    strategy_name = "deepspeed_cpu"

    def __init__(self, *args, process_group_backend: str | None = "gloo", **kwargs):
        super().__init__(*args, process_group_backend=process_group_backend, **kwargs)

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # the parent's, without its "only on CUDA GPUs" refusal

    def setup_distributed(self) -> None:
        # The parent's, without `_validate_device_index_selection` (CUDA device indices).
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        # DeepSpeed reads the device index of the root device for `device_rank`; a bare "cpu" has none.
        return torch.device("cpu", self.local_rank)
