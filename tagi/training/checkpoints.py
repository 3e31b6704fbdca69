"""What a stage checkpoint holds besides weights and its provenance record (`tagi.provenance`): RNG
states for an exact resume, and a DeepSpeed ZeRO folder consolidated into one file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from tagi.io import read_checkpoint


def load_stage_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as one dict: a single file, or a DeepSpeed ZeRO checkpoint *folder*
    (what `strategy: deepspeed` writes), consolidated to fp32 weights with Lightning's converter
    into a `<folder>.fp32.ckpt` file beside it (kept, so the next stage reuses it)."""
    path = Path(path)
    if path.is_dir():
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        single = path.with_name(path.name + ".fp32.ckpt")
        if not single.is_file():
            staging = single.with_name(f".tmp-{single.name}")
            convert_zero_checkpoint_to_fp32_state_dict(str(path), str(staging))
            os.replace(staging, single)  # a killed conversion never leaves a half file under the final name
        path = single
    return read_checkpoint(path, "model.init_args.init_from")


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
