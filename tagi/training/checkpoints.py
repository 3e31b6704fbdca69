"""What a stage checkpoint holds besides weights and its provenance record (`tagi.provenance`): RNG
states for an exact resume. (A DeepSpeed ZeRO folder is read by `tagi.io.read_checkpoint`.)"""

from __future__ import annotations

import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states


def save_rng_states(checkpoint: dict) -> None:
    """Lightning does not save RNG states; dropout after a resume must draw what it would have drawn.
    numpy's state holds an ndarray, which `torch.load(weights_only=True)` refuses: stored as a tensor."""
    states = _collect_rng_states(include_cuda=torch.cuda.is_available())
    name, keys, *rest = states["numpy"]
    checkpoint["rng_states"] = {**states, "numpy": (name, torch.from_numpy(keys.astype("int64")), *rest)}


def restore_rng_states(checkpoint: dict) -> None:
    if "rng_states" in checkpoint:
        states = checkpoint["rng_states"]
        name, keys, *rest = states["numpy"]
        _set_rng_states({**states, "numpy": (name, keys.numpy().astype("uint32"), *rest)})
