"""The optimizer (AdamW or Adafactor), its weight-decay groups and its schedule, shared by every stage."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_linear_schedule_with_warmup
from transformers.optimization import Adafactor

from tagi.training.config import Optimization

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

Parameters = list[Tensor] | list[dict]  # tensors, or torch's parameter groups ({"params": [...], ...})


def _tensors(parameters: Parameters) -> list[Tensor]:
    return [p for group in parameters for p in group["params"]] if parameters and isinstance(parameters[0], dict) \
        else list(parameters)


def make_adamw(parameters: Parameters, optimization: Optimization, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW; with `optimization.fused` (or `fused`) torch's fused kernel where it has one for these
    tensors (CPU and CUDA floats): the default update walks the weights in several passes per step."""
    fused = optimization.fused if fused is None else fused
    fused = fused and all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in _tensors(parameters))
    return torch.optim.AdamW(parameters, lr=optimization.learning_rate, weight_decay=optimization.weight_decay,
                             fused=fused or None)


def make_adafactor(parameters: Parameters, optimization: Optimization) -> Adafactor:
    """transformers' Adafactor as the Hugging Face Trainer builds it for `optim=adafactor` (the official TAGI code's
    trainer): the configured learning rate as it is, so the schedule drives it. Its own defaults would replace the
    learning rate with a relative step size (relative_step) and scale it by each weight's norm (scale_parameter)."""
    return Adafactor(parameters, lr=optimization.learning_rate, weight_decay=optimization.weight_decay,
                     scale_parameter=False, relative_step=False, warmup_init=False)


def make_optimizer(parameters: Parameters, optimization: Optimization) -> torch.optim.Optimizer:
    """The optimizer `optimization.optimizer` names."""
    if optimization.optimizer == "adamw":
        return make_adamw(parameters, optimization)
    if optimization.optimizer == "adafactor":
        return make_adafactor(parameters, optimization)
    raise ValueError(f"optimization.optimizer: {optimization.optimizer!r}; it must be 'adamw' or 'adafactor'")


def decays(module: nn.Module, parameter: Tensor) -> bool:
    """Whether `parameter`, owned by `module`, is a weight matrix: 2-D or more and not an embedding table. Biases and
    norm scales are 1-D; an embedding row only moves when its token (or site) is in the batch, so decay would
    shrink rare rows every step they are absent."""
    return parameter.ndim >= 2 and not isinstance(module, nn.Embedding)


def parameter_groups(model: nn.Module, optimization: Optimization) -> Parameters:
    """The trainable parameters of `model`, grouped for `optimization.weight_decay_on`:
    "all" → one list (every trained weight decays); "matrices" → a decayed group of weight matrices and an
    undecayed group of the rest. A weight shared by two modules (T5's tied embedding) is counted once."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimization.weight_decay_on == "all":
        return trainable
    if optimization.weight_decay_on != "matrices":
        raise ValueError(f"optimization.weight_decay_on: {optimization.weight_decay_on!r}; it must be 'all' or 'matrices'")
    decayed: dict[int, Tensor] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if parameter.requires_grad and decays(module, parameter):
                decayed[id(parameter)] = parameter
    # an embedding table that is also some module's 2-D weight (a tied head) stays undecayed
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay_ids = decayed.keys() - embeddings
    decay = [p for p in trainable if id(p) in decay_ids]
    rest = [p for p in trainable if id(p) not in decay_ids]
    return [{"params": decay, "weight_decay": optimization.weight_decay}, {"params": rest, "weight_decay": 0.0}]


def optimizer_and_schedule(parameters: Parameters, optimization: Optimization, total_steps: int,
                           restart_every: int | None = None) -> dict:
    """What `configure_optimizers` returns: the optimizer, and linear warm-up then decay, stepped every optimizer step.
    `restart_every`: the schedule is that many steps long and starts over after each (the teachers: one per cluster)."""
    optimizer = make_optimizer(parameters, optimization)
    if restart_every:
        warmup = int(optimization.warmup_ratio * restart_every)
        scheduler = LambdaLR(optimizer, partial(_restarting_linear, warmup=warmup, length=restart_every))
    else:
        total = max(1, total_steps)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(optimization.warmup_ratio * total), total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _restarting_linear(step: int, warmup: int, length: int) -> float:
    """transformers' linear warm-up and decay, at the step within the current `length`-step cycle."""
    step %= length
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (length - step) / max(1, length - warmup))
