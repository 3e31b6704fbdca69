"""AdamW and its schedule, shared by every stage."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import get_linear_schedule_with_warmup

from tagi.training.config import Optimization

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def make_adamw(parameters: list[Tensor], optimization: Optimization, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW; with `optimization.fused` (or `fused`) torch's fused kernel where it has one for these
    tensors (CPU and CUDA floats): the default update walks the weights in several passes per step."""
    fused = optimization.fused if fused is None else fused
    fused = fused and all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in parameters)
    return torch.optim.AdamW(parameters, lr=optimization.learning_rate, weight_decay=optimization.weight_decay,
                             fused=fused or None)


def optimizer_and_schedule(parameters: list[Tensor], optimization: Optimization, total_steps: int) -> dict:
    """What `configure_optimizers` returns: AdamW, and linear warm-up then decay, stepped every optimizer step."""
    optimizer = make_adamw(parameters, optimization)
    total = max(1, total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(optimization.warmup_ratio * total), total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
