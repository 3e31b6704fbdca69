"""What every stage shares: the backbone spec, the tokenizer, the optimizer, and evaluation by
generation — on the validation tasks while fitting, on the test tasks in `test` — scored with
torchmetrics (ROUGE-L, exact match; per task, per category, overall).

Subclasses implement `training_step` and `generate_texts(batch) -> list[str]`.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from tagi.data.tokenization import load_tokenizer
from tagi.errors import NonFiniteLossError
from tagi.eval.metrics import InstructionMetrics, results_table
from tagi.eval.rank import RankAccuracy, rank_classify
from tagi.provenance import PROVENANCE_KEY
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
        checkpoint[PROVENANCE_KEY] = self.describe()
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

    def _eval_step(self, batch: dict) -> list[str]:
        """Generate, and score where this run has tasks to score (`predict` has none)."""
        texts = self.generate_texts(batch)
        if self.eval_metrics is not None:
            self.eval_metrics.update(texts, batch["references"], batch["task_names"])
            self._rank_step(batch)
        return texts

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
        if self.eval_metrics is not None:
            self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> list[str]:
        return self._eval_step(batch)  # `EvaluationWriter` streams them to predictions.jsonl

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")  # logged as test/...; `EvaluationWriter` writes results.json from them

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        return self.generate_texts(batch)

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

    # -- optimisation

    def configure_optimizers(self):
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        return optimizer_and_schedule(trainable, self.optimization, int(self.trainer.estimated_stepping_batches))


def group_rows(keys: Tensor) -> list[tuple[int, Tensor]]:
    """Rows of a batch grouped by an integer key (task index, cluster id): [(key, row indices)]."""
    return [(int(key), (keys == key).nonzero().squeeze(1)) for key in torch.unique(keys)]
