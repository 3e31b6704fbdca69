"""The one base of the four stages (θ0, teacher, pretrain, finetune): the backbone spec, the tokenizer,
the loss sum, the checkpoint's provenance record, the optimizer, and evaluation by generation — on the
validation tasks while fitting, on the test tasks in `test` — scored by a composed `Evaluation`.

A stage implements `training_step`; θ0 and the teachers also `generate_texts` and `option_logits`.
The student stages (pretrain, finetune) set `self.student`, a `StudentRunner`, and evaluate through
it: the same code path as `Student`, with its per-task cache; on test their `Evaluation` also
tallies the inference cost.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from tagi.data.tokenization import load_tokenizer
from tagi.errors import NonFiniteLossError
from tagi.eval.cost import CostTally
from tagi.eval.evaluation import Evaluation
from tagi.eval.metrics import results_table
from tagi.inference.runner import StudentRunner
from tagi.provenance import PROVENANCE_KEY
from tagi.training.checkpoints import restore_rng_states, save_rng_states
from tagi.training.config import Backbone, Generation, Optimization
from tagi.training.optim import optimizer_and_schedule, parameter_groups

log = logging.getLogger(__name__)


class Stage(L.LightningModule):
    stage = "stage"  # the method's name for this stage: theta0 / teacher / pretrain / finetune

    def __init__(self, backbone: Backbone, tokenizer: str, optimization: Optimization, generation: Generation):
        super().__init__()
        self.tokenizer_name = tokenizer
        self.tokenizer = load_tokenizer(tokenizer)
        self.backbone_spec = backbone
        self.optimization = optimization
        self.generation = generation
        self.evaluation: Evaluation | None = None  # built in `setup` for the tasks this run evaluates
        self.student: StudentRunner | None = None  # the student stages' model, run task by task
        self.adapter_only = False  # student stages: evaluate backbone + generated LoRA alone (what `tagi adapter` exports)
        self.last_scores: dict[str, float] = {}  # the last validation's (not the sanity check's)
        self.checkpoint_step: int | None = None  # test/predict: the step the loaded weights were trained to

    def describe(self) -> dict:
        """What produced a checkpoint: stored under checkpoint["tagi"] and read back by `tagi.provenance`.

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
        state = checkpoint.get("state_dict")  # a DeepSpeed save drops it afterwards: its engine writes the module states
        for key in self.theta0_weights() if state is not None else ():
            state.pop(key, None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # test/predict do not restore the loop counters: keep it for results.json
        self.checkpoint_step = checkpoint.get("global_step")
        restore_rng_states(checkpoint)
        # θ0's frozen weights, left out of the file, are the ones this stage loaded (Lightning then loads strictly,
        # so any other missing tensor is still an error); a checkpoint from before holds them, loaded as they are
        state, current = checkpoint.get("state_dict"), None
        for key in self.theta0_weights() if state is not None else ():
            if key not in state:
                current = self.state_dict() if current is None else current
                state[key] = current[key]

    def backbone_module(self) -> torch.nn.Module:
        """θ0, as this stage loaded it from `backbone_spec`: the student stages' `model.backbone`, the others' `backbone`."""
        model = getattr(self, "model", None)
        return self.backbone if model is None else model.backbone

    def theta0_weights(self) -> set[str]:
        """The state-dict keys of θ0's frozen weights. A stage checkpoint leaves them out: every stage loads θ0 itself
        from `backbone_spec` (a tiny one seeded, a folder checked by its weights' digest on every load), and a copy
        in each checkpoint was θ0's size again (SmolLM2: 538 MB per file, where its LoRA and optimizer hold a few)."""
        backbone = self.backbone_module()
        prefix = next(name for name, module in self.named_modules() if module is backbone)
        return {f"{prefix}.{name}" for name, parameter in backbone.named_parameters(remove_duplicate=False)
                if not parameter.requires_grad}

    def prepare(self, datamodule) -> None:
        """Load and check what this stage reads from earlier stages; raise `TagiError` on a mismatch.
        Called before training writes anything; the data module is already set up."""

    # -- training

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

    def configure_optimizers(self):
        groups = parameter_groups(self, self.optimization)
        return optimizer_and_schedule(groups, self.optimization, int(self.trainer.estimated_stepping_batches))

    # -- how rows are answered (θ0 and the teachers override both)

    def generate_texts(self, batch: dict) -> list[str]:
        """One prediction per row."""
        return self.student.generate(batch, self.adapter_only, **self.generate_kwargs())

    def option_logits(self, batch: dict, rows: Tensor, labels: Tensor) -> Tensor:
        """Logits (len(rows), Y, V) of `labels` for the given batch rows (rank classification)."""
        return self.student.option_logits(batch, rows, labels, self.adapter_only)

    def generate_kwargs(self) -> dict:
        kwargs = dict(max_new_tokens=self.generation.max_new_tokens, num_beams=self.generation.num_beams, do_sample=False)
        answer_end = getattr(self, "answer_end", None)  # the data's prompt format's, once `setup` has run
        return kwargs if answer_end is None else {**kwargs, "eos_token_id": answer_end}

    def decode(self, sequences: Tensor) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)

    # -- evaluation: validation while fitting, test, predict

    def setup(self, stage: str) -> None:
        """An evaluation over the tasks this run scores: `val_tasks` when fitting/validating, else `eval_tasks`
        (and there a student's inference cost)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        prompt_format = getattr(datamodule, "prompt_format", None)
        self.answer_end = None if prompt_format is None else prompt_format.answer_end  # where generation stops
        tasks = getattr(datamodule, "eval_tasks" if stage == "test" else "val_tasks", None)
        cost = CostTally(self.student.model) if stage == "test" and self.student is not None else None
        self.evaluation = Evaluation(tasks, self.tokenizer, cost) if tasks and stage != "predict" else None

    def _evaluate(self, batch: dict) -> list[str]:
        """Generate, and score where this run has tasks to score (`predict` has none)."""
        texts = self.generate_texts(batch)
        if self.evaluation is not None:
            self.evaluation.update(batch, texts, lambda rows, labels: self.option_logits(
                batch, rows.to(self.device), labels.to(self.device)))
        return texts

    def _end_evaluation(self, prefix: str) -> dict[str, float]:
        if self.evaluation is None:
            return {}
        scores = self.evaluation.compute()
        # Already global: torchmetrics synced the states across ranks in `compute`. Lightning cannot know, and
        # under DDP/DeepSpeed warned once per logged key (hundreds of lines per evaluation) to sync again.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting")
            self.log_dict({f"{prefix}/{key}": value for key, value in scores.items()}, sync_dist=False)
        if not self.trainer.sanity_checking:
            rank_zero_info(f"{prefix} scores at step {self.global_step}:\n{results_table(scores)}")
        return scores

    def _weights_changed(self) -> None:
        if self.student is not None:
            self.student.cache.clear()  # encodings of the earlier weights

    def on_validation_epoch_start(self) -> None:
        self._weights_changed()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.evaluation is not None:
            self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        scores = self._end_evaluation("val")
        if scores and not self.trainer.sanity_checking:
            self.last_scores = scores
        self._weights_changed()

    def on_test_epoch_start(self) -> None:
        self._weights_changed()  # the cache is kept after the epoch: results.json (written on test end) counts its runs

    def test_step(self, batch: dict, batch_idx: int) -> list[str]:
        return self._evaluate(batch)  # `EvaluationWriter` streams them to predictions.jsonl

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")  # logged as test/...; `EvaluationWriter` writes results.json from them

    def on_predict_epoch_start(self) -> None:
        self._weights_changed()

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        return self.generate_texts(batch)
