"""What a stage checkpoint holds besides weights, and how the next stage reads it: the provenance
record of the backbone (with θ0's weight digest), RNG states for an exact resume, and a DeepSpeed
ZeRO folder consolidated into one file."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from tagi.io import read_checkpoint, weights_digest


STAGE_RENAMED = {"full": "theta0"}  # stage 0's record in checkpoints written before it had one name


def recorded_stage(record: dict) -> str | None:
    """The stage a checkpoint's `tagi` record names, under today's name."""
    stage = record.get("stage")
    return STAGE_RENAMED.get(stage, stage)


def backbone_record(spec: dict) -> dict:
    """What a checkpoint, teacher or adapter records of its backbone: the spec, and for a local folder the
    digest of its weights (`tagi.io.weights_digest`), so a θ0 retrained in place is noticed."""
    name = spec["name"]
    weights = _weights_digest(_resolved(name)) if name != "tiny" and Path(name).is_dir() else None
    return {**spec, **({"weights": weights} if weights else {})}


def same_backbone(spec: dict, saved: dict | None, default: dict) -> bool:
    """Is `saved` (a checkpoint's or teacher's record of its backbone) the backbone `spec`? Local folders
    compare by resolved path, so a relative and an absolute spelling agree, and by the weights' digest
    where both sides have one (records from before digests have none). `default`: the spec's defaults,
    which a record may leave out."""
    if not saved:
        return False
    if spec["name"] == "tiny" or saved.get("name") == "tiny":
        return spec == {**default, **{k: v for k, v in saved.items() if k != "weights"}}
    mine = backbone_record(spec).get("weights")
    same_weights = mine is None or saved.get("weights") is None or mine == saved["weights"]
    return _resolved(spec["name"]) == _resolved(saved.get("name", "")) and same_weights


@functools.lru_cache(maxsize=8)
def _weights_digest_at(folder: str, mtime_ns: int) -> str | None:
    return weights_digest(folder)


def _weights_digest(folder: str) -> str | None:
    """Cached per folder state: a stage asks several times (describe, checks) and θ0 may be large."""
    stamps = [path.stat().st_mtime_ns for path in Path(folder).iterdir()]
    return _weights_digest_at(folder, max(stamps, default=0))


def _resolved(name: str) -> str:
    return str(Path(name).resolve()) if Path(name).exists() else name


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
