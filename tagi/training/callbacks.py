"""Callbacks the CLI installs on every Trainer: when each artifact of a run is written (the stages only
compute; θ0's and the teachers' folder formats are their stage's `export`), and a progress bar that
counts optimizer steps."""

from __future__ import annotations

import csv
import io
import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from tagi.eval.cost import CostTally
from tagi.eval.reports import PREDICTIONS, RESULTS_MD, PredictionWriter, write_results
from tagi.io import COMPLETE_NAME, FolderClaim, atomic_write_text, read_checkpoint_record


class StepProgressBar(RichProgressBar):
    """Lightning's bar, led by the optimizer step out of max_steps: a run set by max_steps has
    max_epochs −1, for which Lightning's own bar reads "Epoch 6/-2"."""

    def _get_train_description(self, current_epoch: int) -> str:
        if not self.trainer.max_steps or self.trainer.max_steps < 0:
            return super()._get_train_description(current_epoch)
        description = f"step {self.trainer.global_step}/{self.trainer.max_steps}"
        return f"{description:{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch))


class FinalCheckpoint(Callback):
    """`checkpoints/last.ckpt` holds the run's final state. Lightning skips the final "last" save once a
    periodic one happened (max_steps 150, every_n_train_steps 100: last.ckpt stays at step 100), and a run
    resumed under another spelling of its folder (relative vs absolute, a moved folder) writes
    `last-v1.ckpt` beside a stale `last.ckpt`. A run folder has one writer, so its `last.ckpt` is always
    its own. Private API of the pinned Lightning (ModelCheckpoint)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for callback in trainer.checkpoint_callbacks:
            callback._enable_version_counter = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted:
            return
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "save_last", False) and callback._last_global_step_saved != trainer.global_step:
                callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


class MetricsLog(Callback):
    """The run's metrics.csv continues across a resume. Flushed at every checkpoint a fit can resume from
    (Lightning calls this hook for full checkpoints, not `save_weights_only` ones), so the log on disk
    reaches the step a resume starts from. Lightning's CSVLogger deletes the file when it creates its
    writer, which happens before any callback hook, so the CLI calls `keep_history` before fitting."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.logger is not None:
            trainer.logger.save()

    @staticmethod
    def keep_history(trainer: L.Trainer, checkpoint: Path | None) -> None:
        """Resuming from `checkpoint`: keep the rows logged before its step, so the resumed run's log
        continues the killed one's instead of replacing it."""
        logger = trainer.logger
        if not isinstance(logger, CSVLogger) or checkpoint is None or trainer.global_rank != 0:
            return
        metrics = Path(logger.log_dir) / "metrics.csv"
        if not metrics.is_file():
            return
        step = read_checkpoint_record(checkpoint, "--ckpt_path")["global_step"]
        with metrics.open(newline="") as file:
            reader = csv.DictReader(file)
            fields, rows = reader.fieldnames, [row for row in reader if int(row["step"]) < step]
        # Creating the writer removes metrics.csv. It appends to an existing file, and rewrites it
        # with a wider header when new keys come, so it must know the old file's keys.
        logger.experiment.metrics_keys = list(fields)
        kept = io.StringIO(newline="")
        writer = csv.DictWriter(kept, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(metrics, kept.getvalue())  # a full disk must not leave half of the run's log


class ExportArtifacts(Callback):
    """What later stages read from a finished fit, written by rank 0 to the stage's `output_dir`: θ0's
    `from_pretrained` folder (stage 0), one PEFT folder per cluster (teachers). The stage says what
    (`export(out_dir)`), this says when: under `claim` (the CLI's, taken when it checked output_dir and
    held since), only if no other run wrote the folder since."""

    def __init__(self, claim: FolderClaim | None = None) -> None:
        self.claim = claim

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out_dir = getattr(pl_module, "output_dir", None)
        if out_dir is None or not hasattr(pl_module, "export") or trainer.interrupted:
            return
        with full_precision_weights(trainer, pl_module):  # every rank: a collective under ZeRO
            if trainer.is_global_zero:
                if self.claim is not None:
                    self.claim.check()
                pl_module.export(Path(out_dir))


@contextmanager
def full_precision_weights(trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator[None]:
    """The trained weights in float32 inside the block. DeepSpeed with bf16/fp16 casts the module to that
    precision and keeps the float32 master weights in its optimizer, sharded across ranks (ZeRO): an
    export of the module's own tensors would write bf16-rounded weights. Every rank must enter (the
    masters are gathered with a collective); the module's tensors are put back after."""
    strategy = trainer.strategy
    if not hasattr(strategy, "deepspeed_engine"):
        yield
        return
    from deepspeed.utils import safe_get_full_fp32_param

    swapped = []
    for parameter in pl_module.parameters():
        if parameter.requires_grad and parameter.dtype not in (torch.float32, torch.float64):
            master = safe_get_full_fp32_param(parameter)
            if master is not None:
                swapped.append((parameter, parameter.data))
                parameter.data = master.to(parameter.device)
    try:
        yield
    finally:
        for parameter, data in swapped:
            parameter.data = data


class CompletionMarker(Callback):
    """`complete.json` in the run folder once a fit has finished: the pipeline skips a stage that has it
    and hands its `last_checkpoint` on. At fit end, not train end: a resume from a checkpoint already at
    max_steps skips the train hooks. Installed after `ExportArtifacts`, so it is written last. A fit that
    starts writing into a finished run (`--overwrite=true`, or continued) removes the old marker first:
    killed, it would otherwise pass for finished, its half-trained last.ckpt skipped over by the pipeline."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if trainer.is_global_zero and log_dir is not None:
            (Path(log_dir) / COMPLETE_NAME).unlink(missing_ok=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if trainer.is_global_zero and log_dir is not None and not trainer.interrupted:
            self._write(trainer, pl_module, Path(log_dir))
        # Every rank returns from fit once the marker and the exports exist: under `tagi pipeline` each rank
        # runs the pipeline, and the next stage reads them (θ0's folder, the teachers, this marker).
        trainer.strategy.barrier("complete.json")

    @staticmethod
    def _write(trainer: L.Trainer, pl_module: L.LightningModule, log_dir: Path) -> None:
        checkpoint = trainer.checkpoint_callback
        marker = dict(
            stage=pl_module.stage,
            global_step=trainer.global_step,
            last_checkpoint=getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", ""),
            interrupted=False,
            metrics={key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1},
        )
        atomic_write_text(log_dir / COMPLETE_NAME, json.dumps(marker, indent=2, sort_keys=True) + "\n")


class EvaluationWriter(Callback):
    """`test`: predictions.jsonl and results.json / results.md in the run's folder; `predict`:
    predictions.jsonl. Predictions stream one JSON line per example as the steps return them (nothing
    is kept in memory); under DDP each rank writes its own share, `predictions.rank<N>.jsonl`."""

    def __init__(self) -> None:
        self._writer: PredictionWriter | None = None

    def _open(self, trainer: L.Trainer) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if log_dir is not None:
            rank = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
            self._writer = PredictionWriter(Path(log_dir) / PREDICTIONS.replace(".jsonl", f"{rank}.jsonl"))

    def _write(self, texts: list[str] | None, batch: dict) -> None:
        if self._writer is not None and texts is not None:
            self._writer.write(batch["task_names"], batch["instance_ids"], batch["inputs"], texts, batch["references"])

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            rank_zero_info(f"wrote {writer.count} predictions to {writer.close()}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A failed or interrupted evaluation leaves no hidden half predictions file behind."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.discard()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(outputs, batch)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the stage's epoch end has computed and logged the scores (`test/...`)."""
        self._close()
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks, then rank 0 writes
        scores = {key.removeprefix("test/"): float(value) for key, value in trainer.callback_metrics.items()
                  if key.startswith("test/")}
        if scores and trainer.is_global_zero and log_dir is not None and pl_module.evaluation is not None:
            cost = pl_module.evaluation.cost
            tally = cost if cost is not None and cost.examples else None
            meta = results_meta(trainer, pl_module, tally)
            path = write_results(log_dir, scores, pl_module.evaluation.task_category, meta,
                                 tally.markdown() if tally is not None else "")
            rank_zero_info(f"wrote {path} and {RESULTS_MD}: {trainer.ckpt_path} at step {meta['global_step']}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.predict_loop.return_predictions = False  # they are streamed to the file instead
        self._open(trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._write(outputs, batch)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()


class StepStats(Callback):
    """What a training step costs, in `perf.json` of the run folder when the fit ends: seconds per optimizer
    step (median, the first step left out: it builds kernels and caches), peak memory per process (CPU
    resident set; on CUDA also the allocator's peak), trainable weights, and tokens per step (every non-pad
    token the step read, over all ranks). Opt-in: `--trainer.callbacks+=tagi.training.callbacks.StepStats`
    (benchmarks/rehearsal.py adds it)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._started)
        self.tokens.append(batch_tokens(batch))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        local = torch.tensor([peak_rss_gib(), torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0],
                             device=device)
        peaks = trainer.strategy.reduce(local, reduce_op="max")  # every rank: a collective
        tokens = trainer.strategy.reduce(torch.tensor(float(np.median(self.tokens or [0])), device=device), reduce_op="sum")
        log_dir = trainer.log_dir
        if not trainer.is_global_zero or log_dir is None:
            return
        timed = self.seconds[1:] or self.seconds
        stats = {"steps": len(self.seconds), "seconds_per_step": float(np.median(timed)) if timed else None,
                 "step_seconds": [round(value, 3) for value in self.seconds], "peak_rss_gib_per_process": float(peaks[0]),
                 "peak_cuda_gib_per_process": float(peaks[1]) if device.type == "cuda" else None,
                 "processes": trainer.world_size, "tokens_per_step": int(tokens),
                 "trainable_weights": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
                 "precision": str(trainer.precision), "strategy": type(trainer.strategy).__name__}
        atomic_write_text(Path(log_dir) / PERF_NAME, json.dumps(stats, indent=2, sort_keys=True) + "\n")


PERF_NAME = "perf.json"


def batch_tokens(batch: dict) -> int:
    """Non-pad tokens a training batch holds: every attention mask (input, instruction, concatenated input),
    and the target positions that count in the loss."""
    masks = sum(int(value.sum()) for key, value in batch.items() if key.endswith("_mask") and torch.is_tensor(value))
    labels = batch.get("labels")
    return masks + (int((labels != -100).sum()) if torch.is_tensor(labels) else 0)


def peak_rss_gib() -> float:
    """This process's peak resident set (Linux reports kibibytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def results_meta(trainer: L.Trainer, pl_module: L.LightningModule, tally: CostTally | None) -> dict:
    """What results.json says besides the scores: the model, its provenance, the student's task-cache
    use and, where measured, the inference cost against instruction concatenation. Under DDP the last
    two are rank 0's share of the test set (the scores are every rank's)."""
    control = getattr(getattr(trainer.datamodule, "hparams", None), "instruction_control", "real")
    step = pl_module.checkpoint_step  # outside fit, the step the loaded weights were trained to
    meta = {"model": type(pl_module).__name__, "checkpoint": trainer.ckpt_path,
            "global_step": pl_module.global_step if trainer.state.fn == "fit" or step is None else step,
            "describe": pl_module.describe(), "instruction_control": control}
    if pl_module.student is not None:
        cache = pl_module.student.cache
        meta |= {"adapter_only": pl_module.adapter_only,
                 "task_cache": {"hypernetwork_runs": cache.misses, "reuses": cache.hits}}
    if tally is not None:
        meta["inference_cost"] = tally.summary()
    return meta


def artifact_callbacks(output_claim: FolderClaim | None = None) -> list[Callback]:
    """Every artifact a run writes besides the checkpoints themselves, in the order they must be written."""
    return [FinalCheckpoint(), MetricsLog(), ExportArtifacts(output_claim), CompletionMarker(), EvaluationWriter()]
