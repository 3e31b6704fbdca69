"""What produced a checkpoint, read and verified in one place.

Every stage stores a record under `checkpoint["tagi"]` (its `describe()`: stage, tokenizer, backbone
with θ0's weight digest, architecture, ...). Three consumers read it back, all through `Provenance`:
a run given `--ckpt_path` (same stage, same backbone), the finetune stage's warm start from
`init_from` (a pretrain checkpoint on the same backbone) and `Student.from_checkpoint` (a student
checkpoint whose θ0 is still the one it was trained on). A teacher's `meta.json` is the same kind of
record, checked by `verify_teacher` for the finetune stage that distils from it. Lightning-free.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from tagi.modeling.backbone import TINY
from tagi.errors import ConfigurationError
from tagi.io import weights_digest

PROVENANCE_KEY = "tagi"  # where a stage stores its `describe()` in a checkpoint
STAGE_RENAMED = {"full": "theta0"}  # stage 0's record in checkpoints written before it had one name
STUDENT_STAGES = ("pretrain", "finetune")  # the stages whose checkpoints hold a hypernetwork


class CheckpointError(ConfigurationError):
    """A checkpoint of another stage, backbone or architecture than the one that reads it: `problem` says what
    does not match, `fix` what to do in the command that read it (a pipeline gives its own)."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem} {fix}".strip())


class BackboneSpec(Protocol):
    """What a consumer knows of its own backbone (`tagi.training.config.Backbone`)."""

    def record(self) -> dict: ...

    def matches(self, saved: dict | None) -> bool: ...


@dataclass(frozen=True)
class Provenance:
    record: dict
    """The checkpoint's `tagi` entry as written ({} for a checkpoint without one)."""
    source: str
    """How messages name the checkpoint: the option and the path the user gave."""

    @classmethod
    def of(cls, checkpoint: Mapping, path: str | Path, option: str) -> "Provenance":
        return cls(dict(checkpoint.get(PROVENANCE_KEY) or {}), f"{option} {path}")

    @property
    def stage(self) -> str | None:
        """The stage that wrote it, under today's name."""
        stage = self.record.get("stage")
        return STAGE_RENAMED.get(stage, stage)

    @property
    def backbone(self) -> dict | None:
        return self.record.get("backbone")

    def verify(self, stages: Collection[str], backbone: BackboneSpec | None = None, hint: str = "") -> "Provenance":
        """Raise `CheckpointError` unless one of `stages` wrote it, on `backbone` (None: on the backbone it
        records, whose local weights must not have changed since). `hint`: how to fix it, for the message."""
        if self.stage not in stages:
            wanted = " or ".join(repr(stage) for stage in stages)
            raise CheckpointError(f"{self.source} was written by the {self.record.get('stage')!r} stage, and a "
                                  f"checkpoint of the {wanted} stage is needed here.", hint)
        if backbone is None:
            self._verify_backbone_unchanged(hint)
        elif not backbone.matches(self.backbone):
            raise CheckpointError(f"{self.source} was trained on backbone {self.backbone}, but this run uses "
                                  f"{backbone.record()}.", hint)
        return self

    def verify_weights(self, saved: Mapping, model: Mapping, architecture: Mapping, hint: str = "",
                       reloaded: Collection[str] = ()) -> "Provenance":
        """Raise `CheckpointError` unless the checkpoint's state dict `saved` loads into a model whose state dict
        is `model`, as Lightning loads it (strictly). Lightning finds out only after the run folder was written
        to, with a traceback. A tensor under a name the model does not have yet counts only within a module it
        has (the teacher stage builds its bank later, at setup). `architecture`: the model's, to say what differs.
        `reloaded`: the keys a checkpoint leaves out because the model loads them itself (θ0's frozen weights)."""
        modules = {key.split(".")[0] for key in model}
        problems = {
            "of another shape": [key for key in model if key in saved and tuple(saved[key].shape) != tuple(model[key].shape)],
            "missing": [key for key in model if key not in saved and key not in reloaded],
            "this model does not have": [key for key in saved if key not in model and key.split(".")[0] in modules],
        }
        if not any(problems.values()):
            return self
        counts = ", ".join(f"{len(keys)} tensors {what}" for what, keys in problems.items() if keys)
        what, keys = next((what, keys) for what, keys in problems.items() if keys)
        example = f"{keys[0]}" + (f": {list(saved[keys[0]].shape)} there, {list(model[keys[0]].shape)} here" if what == "of another shape" else "")
        differs = [f"{key} {value!r} there, {architecture.get(key)!r} here"
                   for key, value in (self.record.get("architecture") or {}).items() if architecture.get(key, value) != value]
        raise CheckpointError(f"{self.source} does not fit this model: {counts} (e.g. {example})"
                              + (f"; its architecture differs: {'; '.join(differs)}" if differs else "") + ".", hint)

    def located(self, checkpoint: str | Path) -> "Provenance":
        """The record with θ0's folder found from here. A stage records θ0's folder as it was given, relative to
        the folder the stage ran in, which `tagi adapter` need not be run from; checkpoints lie under that
        folder (checkpoints/<run>/<stage>/checkpoints/last.ckpt), so it is looked for above the checkpoint too.
        Only a record with a weights digest names a folder (a hub id has none); the digest is then checked."""
        spec = self.backbone or {}
        name = spec.get("name", "tiny")
        if not spec.get("weights") or Path(name).is_dir():
            return self
        found = next((root / name for root in Path(checkpoint).resolve().parents if (root / name).is_dir()), None)
        return self if found is None else replace(self, record={**self.record, "backbone": {**spec, "name": str(found)}})

    def _verify_backbone_unchanged(self, hint: str) -> None:
        """The LoRA was learned for θ0's weights: a θ0 folder retrained in place since is an error, and so is
        one that is gone (it would be taken for a hub id), and so are a hub id's weights changed since."""
        spec = self.backbone or {}
        recorded, folder = spec.get("weights"), Path(spec.get("name", "tiny"))
        if recorded and not folder.is_dir():
            raise CheckpointError(f"{self.source} was trained on the θ0 folder {folder} (weights {recorded}), which is "
                                  f"not there, neither from the current folder ({Path.cwd()}) nor above the checkpoint.",
                                  "Run this from the folder the stages ran in, or put θ0 back where it was.")
        self.verify_hub_weights(hint)
        if recorded and weights_digest(folder) != recorded:
            raise CheckpointError(f"{self.source} was trained on backbone {folder} with weights {recorded}, but the "
                                  f"weights there are now {weights_digest(folder)} (θ0 was retrained or replaced since).",
                                  f"Use the θ0 it was trained on, or retrain on this one. {hint}".strip())

    def verify_hub_weights(self, hint: str = "") -> None:
        """A hub id's weights as the local cache has them now (what `from_pretrained` loaded or will load offline)
        must be the ones the record names: a repository whose weights changed since, downloaded by a later load, is an
        error. A commit that changed no weight file (a README, a config) is not. Called again after loading."""
        spec = self.backbone or {}
        recorded = spec.get("hub_weights")
        now = hub_weights(spec.get("name", "tiny")) if recorded else None
        if recorded and now and now[1] != recorded:
            raise CheckpointError(f"{self.source} was trained on hub model {spec['name']} with weights {recorded} (revision "
                                  f"{spec.get('revision')}), but the weights there are now {now[1]} (revision {now[0]}): "
                                  "the repository's weights changed since.", f"Retrain on these weights. {hint}".strip())


def verify_teacher(directory: Path, meta: Mapping, backbone: BackboneSpec, lora_rank: int, tokenizer: str,
                   teacher_backbone: bool = False) -> None:
    """Raise `CheckpointError` unless the teacher in `directory` (its `meta.json`, `meta`) was trained on
    `backbone` with `tokenizer`, at the student's `lora_rank`. `backbone` is θ0, or the model the student's
    `model.init_args.teacher_backbone` names (`teacher_backbone` True)."""
    differences = []
    if not backbone.matches(meta.get("backbone")):
        differences.append(_backbone_difference(meta, backbone, teacher_backbone))
    if meta.get("lora_rank") != lora_rank:
        differences.append(f"LoRA rank {meta.get('lora_rank')} ≠ the hypernetwork's {lora_rank}")
    if meta.get("tokenizer") != tokenizer:
        differences.append(f"tokenizer {meta.get('tokenizer')!r} ≠ {tokenizer!r}")
    if differences:
        raise CheckpointError(
            f"teacher {directory} does not match this student: " + "; ".join(differences) + ".",
            "Retrain the teachers with this backbone (or teacher_backbone), tokenizer and lora_rank (teacher.yaml), "
            "or point model.init_args.teachers at the folder the matching teacher stage wrote.")


def _backbone_difference(meta: Mapping, backbone: BackboneSpec, teacher_backbone: bool) -> str:
    saved = meta.get("backbone")
    if teacher_backbone:
        return f"backbone {saved} ≠ model.init_args.teacher_backbone {backbone.record()}"
    if meta.get("teacher_backbone"):  # trained on a model other than θ0 on purpose: say how to use it
        return (f"backbone {saved} (the teacher stage's teacher_backbone) ≠ θ0 {backbone.record()}; to distil from "
                "teachers on another model, set model.init_args.teacher_backbone to theirs")
    return f"backbone {saved} ≠ {backbone.record()}"


def backbone_record(spec: dict) -> dict:
    """What a checkpoint, teacher or adapter records of its backbone: the spec, and for a local folder the
    digest of its weights (`tagi.io.weights_digest`), so a θ0 retrained in place is noticed; for a hub id,
    the digest of the weights the local cache has for it (and their revision), so a repository whose weights
    changed since is noticed."""
    name = spec["name"]
    if name in TINY:
        return dict(spec)
    if Path(name).is_dir():
        weights = _weights_digest(_resolved(name))
        return {**spec, **({"weights": weights} if weights else {})}
    cached = hub_weights(name)
    return {**spec, **({"revision": cached[0], "hub_weights": cached[1]} if cached else {})}


def hub_weights(name: str) -> tuple[str, str] | None:
    """(revision, weights digest) of hub model `name` as it loads here now: the snapshot the local cache resolves it
    to (the download `from_pretrained` made or reuses); None when it is not cached or holds no weights."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid hub id (huggingface_hub's HFValidationError)
        return None
    snapshot = Path(path).parent if isinstance(path, str) else None
    digest = _weights_digest(str(snapshot)) if snapshot is not None else None
    return (snapshot.name, digest) if digest else None


def same_backbone(spec: dict, saved: dict | None, default: dict) -> bool:
    """Is `saved` (a checkpoint's or teacher's record of its backbone) the backbone `spec`? Local folders
    compare by resolved path, so a relative and an absolute spelling agree, and by the weights' digest
    where both sides have one (records from before digests have none); hub ids by the weights' digest likewise.
    `default`: the spec's defaults, which a record may leave out."""
    if not saved:
        return False
    if spec["name"] in TINY or saved.get("name") in TINY:
        return spec == {**default, **{k: v for k, v in saved.items() if k != "weights"}}
    mine = backbone_record(spec)
    same = all(mine.get(key) is None or saved.get(key) is None or mine[key] == saved[key] for key in ("weights", "hub_weights"))
    return _resolved(spec["name"]) == _resolved(saved.get("name", "")) and same


@functools.lru_cache(maxsize=8)
def _weights_digest_at(folder: str, mtime_ns: int) -> str | None:
    return weights_digest(folder)


def _weights_digest(folder: str) -> str | None:
    """Cached per folder state: a stage asks several times (describe, checks) and θ0 may be large."""
    stamps = [path.stat().st_mtime_ns for path in Path(folder).iterdir()]
    return _weights_digest_at(folder, max(stamps, default=0))


def _resolved(name: str) -> str:
    return str(Path(name).resolve()) if Path(name).exists() else name
