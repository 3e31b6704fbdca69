"""What every stage shares: the backbone spec, the tokenizer, the optimizer, and evaluation by
generation — on the validation tasks while fitting, on the test tasks in `test` — scored with
torchmetrics (ROUGE-L, exact match; per task, per category, overall).

Subclasses implement `training_step` and `generate_texts(batch) -> list[str]`.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from tagi.data.tokenization import load_tokenizer
from tagi.errors import NonFiniteLossError
from tagi.io import atomic_write_text
from tagi.eval.metrics import InstructionMetrics, results_table
from tagi.eval.rank import RankAccuracy, rank_classify
from tagi.eval.reports import COMPLETE_NAME, PREDICTIONS, RESULTS_MD, PredictionWriter, write_results
from tagi.training.checkpoints import restore_rng_states, save_rng_states
from tagi.training.config import Backbone, Generation, Optimization
from tagi.training.optim import optimizer_and_schedule

log = logging.getLogger(__name__)



class GenerativeStage(L.LightningModule):
    """Base LightningModule: optimizer + validation/test by generation (validation tasks while fitting, test tasks in `test`)."""

    def __init__(self, backbone: Backbone, tokenizer: str, optimization: Optimization, generation: Generation):
        super().__init__()
        self.tokenizer_name = tokenizer
        self.tokenizer = load_tokenizer(tokenizer)
        self.backbone_spec = backbone
        self.optimization = optimization
        self.generation = generation
        self.eval_metrics: InstructionMetrics | None = None
        self._predictions: PredictionWriter | None = None  # open during test / predict epochs
        self.rank_accuracy = RankAccuracy()  # multiple-choice rows only (instances with "options")
        self._ranked = 0

    stage = "stage"  # the method's name for this stage: teacher / pretrain / finetune

    def describe(self) -> dict:
        """What produced a checkpoint: stored under checkpoint["tagi"] and read by the next stage.

        Kept out of Lightning's `hyper_parameters` on purpose: LightningCLI re-applies those over the
        command line when `--ckpt_path` is given, which would undo overrides such as `adapter_only`.
        """
        return dict(
            stage=self.stage,
            tokenizer=self.tokenizer_name,
            backbone=self.backbone_spec.record(),
            optimization=asdict(self.optimization),
            generation=asdict(self.generation),
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tagi"] = self.describe()
        save_rng_states(checkpoint)
        if self._trainer is not None and self.trainer.logger is not None:
            self.trainer.logger.save()  # the log up to this checkpoint is on disk, so a resume continues it

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # test/predict do not restore the loop counters: keep the step the evaluated weights were trained to
        self.checkpoint_step = checkpoint.get("global_step")
        restore_rng_states(checkpoint)

    def training_loss(self, terms: dict[str, Tensor], batch_size: int, weights: dict[str, float] | None = None) -> Tensor:
        """Σ weight·term, each term logged as train/<name> (and the sum as train/loss when there are
        several). A NaN/inf stops the run on every rank before the optimizer step, so the last
        checkpoint on disk stays the last good one."""
        weights = weights or {}
        loss = sum(weights.get(name, 1.0) * value for name, value in terms.items())
        finite = bool(torch.isfinite(loss.detach()))
        if self._trainer is not None:  # every rank must stop together, or the others hang in all-reduce
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            values = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in terms.items())
            raise NonFiniteLossError(
                f"step {self.global_step}: the training loss is not finite ({values}). The run stopped before the "
                "optimizer step, so the last checkpoint written is the last good one. Lower "
                "optimization.learning_rate or set trainer.gradient_clip_val, check the data, then resume with --ckpt_path last.")
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, prog_bar=len(terms) == 1, batch_size=batch_size)
        if len(terms) > 1:
            self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def prepare(self, datamodule) -> None:
        """Load and check what this stage reads from earlier stages; raise `TagiError` on a mismatch.
        Called before training writes anything; the data module is already set up."""

    # -- evaluation

    def setup(self, stage: str) -> None:
        """Metrics over the tasks this run evaluates: `val_tasks` when fitting/validating, else `eval_tasks`."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tasks = getattr(datamodule, "eval_tasks" if stage == "test" else "val_tasks", None)
        self.eval_metrics = InstructionMetrics(tasks) if tasks and stage != "predict" else None

    @abstractmethod
    def generate_texts(self, batch: dict) -> list[str]:
        """One prediction per row; each stage decides how its rows get their weights."""

    def decode(self, sequences: Tensor) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    def generate_kwargs(self) -> dict:
        return dict(max_new_tokens=self.generation.max_new_tokens, num_beams=self.generation.num_beams, do_sample=False)

    def _eval_step(self, batch: dict) -> None:
        if self.eval_metrics is None and self._predictions is None:
            return
        texts = self.generate_texts(batch)
        if self.eval_metrics is not None:
            self.eval_metrics.update(texts, batch["references"], batch["task_names"])
            self._rank_step(batch)
        if self._predictions is not None:
            self._predictions.write(batch["task_names"], batch["instance_ids"], batch["inputs"], texts, batch["references"])

    def _rank_step(self, batch: dict) -> None:
        """Rank classification for the rows that carry answer options (multiple-choice instances)."""
        rows = [i for i, options in enumerate(batch.get("options") or []) if options]
        if not rows:
            return
        index = torch.tensor(rows, device=self.device)

        def scorer(option_rows: Tensor, labels: Tensor) -> Tensor:
            return self.option_logits(batch, index[option_rows.to(self.device)], labels.to(self.device))

        chosen = rank_classify(scorer, [batch["options"][i] for i in rows], self.tokenizer.pad_token_id)
        correct = [[k for k, text in enumerate(self._option_texts(batch["options"][i])) if text in batch["references"][i]]
                   for i in rows]
        self.rank_accuracy.update(chosen, correct)
        self._ranked += len(rows)

    def _option_texts(self, options: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(options, skip_special_tokens=True)

    @abstractmethod
    def option_logits(self, batch: dict, rows: Tensor, labels: Tensor) -> Tensor:
        """Logits (len(rows), Y, V) of `labels` for the given batch rows, as this stage predicts them
        (rank classification); every stage implements it with its own weights."""

    def _eval_epoch_end(self, prefix: str) -> dict[str, float]:
        if self.eval_metrics is None:
            return {}
        scores = {key: float(value) for key, value in self.eval_metrics.compute().items()}
        self.eval_metrics.reset()
        if self._ranked:
            scores["rank_accuracy"], scores["rank_count"] = 100 * float(self.rank_accuracy.compute()), float(self._ranked)
        self.rank_accuracy.reset()
        self._ranked = 0
        self.log_dict({f"{prefix}/{key}": value for key, value in scores.items()}, sync_dist=False)
        if not self.trainer.sanity_checking:
            rank_zero_info(f"{prefix} scores at step {self.global_step}:\n{results_table(scores)}")
        return scores

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    # -- test: scores + results.json/.md + predictions.jsonl; predict: predictions.jsonl only

    def _open_predictions(self) -> None:
        if self.trainer.log_dir is None:
            return
        rank = f".rank{self.global_rank}" if self.trainer.world_size > 1 else ""  # each rank writes its share
        self._predictions = PredictionWriter(Path(self.trainer.log_dir) / PREDICTIONS.replace(".jsonl", f"{rank}.jsonl"))

    def _close_predictions(self) -> Path | None:
        writer, self._predictions = self._predictions, None
        if writer is None:
            return None
        path = writer.close()
        rank_zero_info(f"wrote {writer.count} predictions to {path}")
        return path

    def on_test_epoch_start(self) -> None:
        self._open_predictions()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        scores = self._eval_epoch_end("test")
        self._close_predictions()
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks, then rank 0 writes
        if scores and self.trainer.is_global_zero and log_dir is not None:
            path = write_results(log_dir, scores, self.eval_metrics.task_category, self.results_meta(),
                                 self.results_markdown())
            rank_zero_info(f"wrote {path} and {RESULTS_MD}: {self.trainer.ckpt_path} at step {self.evaluated_step}")

    def results_meta(self) -> dict:
        """What the results describe: the model and its provenance (extended by subclasses)."""
        data = getattr(self.trainer, "datamodule", None)
        control = getattr(getattr(data, "hparams", None), "instruction_control", "real")
        return {"model": type(self).__name__, "checkpoint": self.trainer.ckpt_path, "global_step": self.evaluated_step,
                "describe": self.describe(), "instruction_control": control}

    @property
    def evaluated_step(self) -> int:
        """The training step of the weights being evaluated (the checkpoint's, outside fit)."""
        step = getattr(self, "checkpoint_step", None)
        return self.global_step if self.trainer.state.fn == "fit" or step is None else step

    def results_markdown(self) -> str:
        """Extra Markdown appended to results.md (subclasses: inference cost)."""
        return ""

    def on_predict_epoch_start(self) -> None:
        self._open_predictions()

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)  # streamed to predictions.jsonl; nothing is kept in memory

    def on_predict_epoch_end(self) -> None:
        self._close_predictions()

    # -- completion marker

    def on_train_end(self) -> None:
        """The run's `last.ckpt` holds its final state. Lightning skips the final "last" save once a periodic
        one happened (max_steps 150, every_n_train_steps 100: last.ckpt stays at step 100), so save it here,
        after the callbacks' own train-end hooks; private API of the pinned Lightning (ModelCheckpoint)."""
        if self.trainer.interrupted:
            return
        for callback in self.trainer.checkpoint_callbacks:
            if getattr(callback, "save_last", False) and callback._last_global_step_saved != self.global_step:
                callback._save_last_checkpoint(self.trainer, callback._monitor_candidates(self.trainer))

    def on_fit_end(self) -> None:
        """Mark the run folder finished (the pipeline skips a stage whose marker exists). At fit end,
        not train end: a resume from a checkpoint already at max_steps skips the train hooks."""
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
        if not self.trainer.is_global_zero or log_dir is None:
            return
        checkpoint = self.trainer.checkpoint_callback
        last = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
        marker = dict(
            stage=self.stage,
            global_step=self.global_step,
            last_checkpoint=last,
            interrupted=self.trainer.interrupted,
            metrics={key: float(value) for key, value in self.trainer.callback_metrics.items() if value.numel() == 1},
        )
        if not self.trainer.interrupted:
            atomic_write_text(Path(log_dir) / COMPLETE_NAME, json.dumps(marker, indent=2, sort_keys=True) + "\n")

    # -- optimisation

    def configure_optimizers(self):
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        return optimizer_and_schedule(trainable, self.optimization, int(self.trainer.estimated_stepping_batches))


def group_rows(keys: Tensor) -> list[tuple[int, Tensor]]:
    """Rows of a batch grouped by an integer key (task index, cluster id): [(key, row indices)]."""
    return [(int(key), (keys == key).nonzero().squeeze(1)) for key in torch.unique(keys)]
