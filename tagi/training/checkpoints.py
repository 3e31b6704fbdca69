"""What a stage checkpoint holds besides weights and its provenance record (`tagi.provenance`): RNG
states for an exact resume; and how a checkpoint file is written. (A DeepSpeed ZeRO folder is read by
`tagi.io.read_checkpoint`, and written by `tagi.training.strategies`.)"""

from __future__ import annotations

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from tagi.io import AtomicFile, signals_deferred


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's saves through fsspec: a temporary file in $TMPDIR, then moved to the checkpoint's name,
    which across filesystems is a copy: a full disk left half a `last.ckpt` under its final name, and a
    small $TMPDIR failed with a traceback naming no file. This one writes beside the checkpoint and renames
    it (`tagi.io.AtomicFile`); a failure is one `WriteError` naming the checkpoint, the old one intact.
    Ctrl-C or SIGTERM during the write waits for it to end (`signals_deferred`). Remote paths (`s3://...`)
    keep Lightning's way."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with signals_deferred(), AtomicFile(path) as handle:
            torch.save(checkpoint, handle)


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
