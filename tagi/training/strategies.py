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

Both leave θ0's frozen weights out of a checkpoint folder (`exclude_frozen_parameters`, on by default here),
as a stage's single-file checkpoint does: the stage loads θ0 itself.

On GPUs the same settings name `tagi.training.strategies.DeepSpeedStrategy`, which Lightning's names
(`deepspeed_stage_2`, ...) give too once this module is imported (the CLI does); everything else (configs,
checkpoints, the ZeRO folder given to `init_from`) is the same.
"""

from __future__ import annotations

import errno
import functools
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch import strategies
from lightning.pytorch.strategies import StrategyRegistry

from tagi.io import os_error_behind, signals_deferred, writing


class DeepSpeedStrategy(strategies.DeepSpeedStrategy):
    def __init__(self, *args, exclude_frozen_parameters: bool = True, **kwargs):
        # True: a checkpoint folder leaves out θ0's frozen weights, as a stage's single-file checkpoint does
        # (the stage loads θ0 itself). DeepSpeed's default, False, saved them in the module's states and, under
        # ZeRO-2, again as "frozen parameter fragments" (copied to the CPU: a second copy of a GPU's weights).
        super().__init__(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        """Lightning's, with the module's states loaded by `_load_module_states`: strict, except for frozen weights (it
        replaces DeepSpeed's own strictness, and so a module's `strict_loading`, which no stage sets)."""
        engine = self.deepspeed_engine
        engine.load_checkpoint = functools.partial(engine.load_checkpoint, custom_load_fn=_load_module_states)
        try:
            return super().load_checkpoint(checkpoint_path, weights_only)
        finally:
            del engine.load_checkpoint  # the engine's own method again

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        target = Path(self.broadcast(str(filepath)))
        staging = target.with_name(f".tmp-{target.name}")
        # Ctrl-C waits for the save: a rank interrupted between collectives would leave the others waiting
        with signals_deferred():
            with writing(target):  # a full disk: one error naming the checkpoint (the old folder is intact)
                self._stop_together(_make_staging(staging) if self.is_global_zero else None, target, staging)
                self._stop_together(self._save_on_every_rank(checkpoint, staging, storage_options), target, staging)
            # every rank's shard is in the staging folder (`_stop_together` is a collective)
            if self.is_global_zero:
                _replace_folder(target, staging)
            self.barrier()

    def _stop_together(self, failure: OSError | None, target: Path, staging: Path) -> None:
        """Stop every rank when a write failed on any: a rank that raises alone leaves the others waiting in the
        next collective forever. Rank 0 raises one error with every failed rank's reason (the others exit 2
        without a word, so the user reads one paragraph); the staging folder goes, the old checkpoint stays."""
        reasons: list = [None] * self.world_size
        torch.distributed.all_gather_object(reasons, None if failure is None else (failure.errno, str(failure)))
        failed = [(rank, reason) for rank, reason in enumerate(reasons) if reason is not None]
        if not failed:
            return
        if not self.is_global_zero:
            raise SystemExit(2)
        shutil.rmtree(staging, ignore_errors=True)
        code = next((number for _, (number, _) in failed if number), errno.EIO)
        raise OSError(code, "; ".join(f"process {rank}: {text}" for rank, (_, text) in failed))

    def _save_on_every_rank(self, checkpoint: dict, staging: Path, storage_options) -> OSError | None:
        """DeepSpeed's save, with a write that fails on this rank held instead of raised. DeepSpeed ends its save
        with a barrier: a rank that raised before it (its shard on a full disk) left the others waiting there
        forever. Shard writes go through the engine's checkpoint engine, whose errors are held so this rank reaches
        the barrier; DeepSpeed's own write after them (rank 0's `latest` file) skipped only that barrier, which is
        then joined here."""
        engine, held = self.deepspeed_engine.checkpoint_engine, []
        save = engine.save

        def save_or_hold(*args, **kwargs):  # the engine's save(state_dict, path)
            if held:
                return  # the shard is lost already; later files of this save would only fail again
            try:
                save(*args, **kwargs)
            except Exception as error:  # torch.save reports a full disk as a RuntimeError, the OSError behind it or lost
                held.append(os_error_behind(error) or OSError(errno.EIO, f"a shard could not be written ({error})"))

        engine.save = save_or_hold
        try:
            with _frozen_aliases_left_out(self.deepspeed_engine, self.exclude_frozen_parameters):
                super().save_checkpoint(checkpoint, staging, storage_options)
        except OSError as error:
            held.append(error)
            torch.distributed.barrier()  # the one DeepSpeed's save ends with, which this rank did not reach
        finally:
            engine.save = save
        return held[0] if held else None


@contextmanager
def _frozen_aliases_left_out(engine, exclude: bool) -> Iterator[None]:
    """DeepSpeed's `exclude_frozen_parameters` drops each frozen weight under one name only: a tied weight's other
    names (T5's encoder and decoder embeddings and LM head, all `shared`) stayed, θ0's embedding with them. Every
    name of a frozen weight is left out here."""
    if not exclude:
        yield
        return
    frozen = [name for name, parameter in engine.module.named_parameters(remove_duplicate=False) if not parameter.requires_grad]

    def module_state_dict(*args, **kwargs):
        states = type(engine).module_state_dict(engine, *args, **kwargs)
        for name in frozen if states is not None and kwargs.get("exclude_frozen_parameters") else ():
            states.pop(name, None)
        return states

    engine.module_state_dict = module_state_dict
    try:
        yield
    finally:
        del engine.module_state_dict  # the engine's own method again


def _load_module_states(src: dict, dst: torch.nn.Module) -> None:
    """The engine's module states into `dst` (DeepSpeed's `custom_load_fn`), strictly, except that a frozen weight may
    be absent: `exclude_frozen_parameters` left it out, and it is θ0, which the stage loaded itself. Any other missing
    or unexpected tensor is an error, as with a strict load."""
    result = dst.load_state_dict(src, strict=False)
    frozen = {name for name, parameter in dst.named_parameters(remove_duplicate=False) if not parameter.requires_grad}
    missing = sorted(set(result.missing_keys) - frozen)
    if missing or result.unexpected_keys:
        raise RuntimeError(f"the checkpoint's module states do not fit the model: missing {missing[:5]} "
                           f"({len(missing)}), unexpected {sorted(result.unexpected_keys)[:5]} ({len(result.unexpected_keys)})")


def _make_staging(staging: Path) -> OSError | None:
    """A fresh staging folder with DeepSpeed's tag folder in it (DeepSpeed creates it on rank 0 before a barrier of
    its own, where a failure would strand the other ranks)."""
    try:
        if staging.exists():
            shutil.rmtree(staging)  # a save killed earlier
        (staging / "checkpoint").mkdir(parents=True)
    except OSError as error:
        return error
    return None


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
    `deepspeed_stage_2`: a bare class path as a string is taken for a name and refused by Lightning. Lightning's
    own names (`deepspeed`, `deepspeed_stage_2`, ...) give this module's `DeepSpeedStrategy`, with their settings:
    they gave Lightning's, whose saves are not atomic and carry θ0."""
    for name, entry in list(registry.items()):
        if entry["strategy"] is strategies.DeepSpeedStrategy:
            registry.register(name, DeepSpeedStrategy, description=entry["description"], override=True,
                              **entry["init_params"])
    for name, stage in CPU_NAMES.items():
        if name not in registry:
            registry.register(name, CPUDeepSpeedStrategy, description=f"DeepSpeed ZeRO-{stage} on CPU processes (gloo)",
                              stage=stage)


register()
