"""The LightningCLI behind `tagi fit | validate | test | predict` (`tagi.cli` routes to it).

Model and data classes are chosen in YAML with `class_path`/`init_args`; values that must agree
between them (the tokenizer) are linked, so they are set once, in `data`. Bad input is caught
before anything is written (`tagi.training.preflight` on the parsed config, then the stage's
`prepare` once model and data exist); the error is a `TagiError`, which `tagi.cli` prints as one
paragraph with exit status 2.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import lightning as L
import torch
from jsonargparse import set_parsing_settings
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tagi.errors import InputError, Terminated
from tagi.io import LOCK_SUFFIX, FolderClaim, atomic_write_text, folder_lock, is_zero_folder, read_checkpoint, read_checkpoint_record
from tagi.provenance import Provenance
from tagi.training import strategies  # noqa: F401  registers `--trainer.strategy=deepspeed_cpu`
from tagi.training.callbacks import MetricsLog, StepProgressBar, artifact_callbacks
from tagi.training.checkpoints import AtomicCheckpointIO
from tagi.training.preflight import (CKPT_ALIASES, EVAL_SUBCOMMANDS, check_config, check_config_arguments, check_config_files,
                                     check_continued_pretrain, check_fit_target, check_lora_rank, checkpoint_for_strategy,
                                     eval_checkpoint, fit_checkpoint, is_training_run, logger_dir, output_dir)


class ShortUsageParser(LightningArgumentParser):
    """jsonargparse prints the whole usage (150 lines: every Trainer option) above each parse error,
    burying the one line that names the bad option; the error comes with one usage line instead."""

    def print_usage(self, file=None) -> None:
        command = self.prog.replace(" [options]", "")  # jsonargparse's subcommand prog: "tagi [options] fit"
        command = "tagi {fit,validate,test,predict}" if command == "tagi" else command
        (file or sys.stdout).write(f"usage: {command} --config FILE [--<section>.<key> VALUE ...]\n")

    def error(self, message: str, ex: Exception | None = None):
        super().error(_named_value_error(message), ex)


# jsonargparse explains a bad value under a class_path with every Union subtype it tried (12 lines for
# `--data.init_args.on_error=ignore`); the branch under the class names the key and what it accepts.
_CLASS_VALUE_ERROR = re.compile(r'^Parser key "(\w+)":\n.*?Problem with given class_path [^\n]*\n\s*Parser key "([\w.]+)":\n\s*([^\n]+)', re.S)


def _named_value_error(message: str) -> str:
    """`data.init_args.on_error: Expected a typing.Literal['raise', 'skip']. Got value: ignore`, or `message` as it is."""
    found = _CLASS_VALUE_ERROR.match(message)
    return f"{found[1]}.init_args.{found[2]}: {found[3].strip()}" if found else message


class SaveConfig(SaveConfigCallback):
    """Lightning's writes config.yaml at `setup`, in place: a fit refused after that (a checkpoint that does
    not restore) had already rewritten the run's config.yaml, and a full disk left half of it. A fit writes
    it when training starts, its checkpoint restored (not at all when there is nothing left to train); an
    evaluation at setup, as before; both beside and renamed (`atomic_write_text`)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            self._write(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if not self.already_saved and trainer.is_global_zero and log_dir is not None:
            atomic_write_text(Path(log_dir) / self.config_filename, self.parser.dump(self.config, skip_unset=False))
        self.already_saved = True


class TAGICLI(LightningCLI):
    output_claim: FolderClaim | None = None  # a fit's output_dir as its check found it (`check_fit_target`)
    overwrite = False  # a fit's --overwrite, which the saved config does not keep

    def add_arguments_to_parser(self, parser) -> None:
        # The model must build its vocabulary from the same tokenizer the data is encoded with.
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer")
        # Our loaders shard across ranks themselves (tagi.data.sampler, _eval_loader); Lightning's
        # injection cannot re-instantiate a custom batch sampler.
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: replace the run folder's finished run and the stage's output_dir (refused otherwise)")

    def _set_seed(self) -> None:
        """A seed numpy refuses (below 0, 2**32 or above) was a ValueError traceback from Lightning."""
        seed = self._get(self.config, "seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
            raise InputError(f"seed_everything: {seed}; give an integer from 0 to {2**32 - 1}, true for a random seed "
                             "or false for none (nothing was written)")
        super()._set_seed()

    def _parse_ckpt_path(self) -> None:
        """Lightning reads --ckpt_path's hyperparameters while parsing: a file that is not a checkpoint is
        reported as such first, instead of an unpickling traceback."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            read_checkpoint(path, "--ckpt_path", mmap=True)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand in EVAL_SUBCOMMANDS:
            config.ckpt_path = eval_checkpoint(self.subcommand, config.as_dict())
            self._own_eval_folder(config)
        if self.subcommand == "fit":
            config.ckpt_path = fit_checkpoint(config.as_dict())  # `last` resolved: checked like any other file
        check_config_files([getattr(path, "absolute", str(path)) for path in config.get("config") or []])
        check_config(config.as_dict())
        if self.subcommand:
            config.ckpt_path = checkpoint_for_strategy(self.subcommand, config.as_dict())
        if self.subcommand == "fit":
            check_lora_rank((config.as_dict().get("model") or {}).get("init_args") or {})
            check_fit_target(config.as_dict())
            out = output_dir(config.as_dict())
            self.output_claim = FolderClaim(out, "model.init_args.output_dir") if out else None
            self.overwrite = config.overwrite  # read again in before_fit (`check_continued_pretrain`)
            config.overwrite = False  # for this run only: the saved config.yaml must not carry it to the next

    def _run_subcommand(self, subcommand: str) -> None:
        """Every subcommand owns its logger folder while it runs (one writer per folder; rank 0 holds it), and a
        fit its output_dir, from here to its export: a second fit into either is refused before it trains."""
        config = self.config[subcommand]
        folder = logger_dir(config.as_dict().get("trainer") or {})
        try:
            if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
                return super()._run_subcommand(subcommand)
            with folder_lock(folder, "trainer.logger") if folder is not None else nullcontext(), \
                    self.output_claim.held() if self.output_claim is not None else nullcontext(), _quiet_if_only_locks(folder):
                return super()._run_subcommand(subcommand)
        except SIGTERMException:  # a SystemExit without a code: the process would exit 0, as if it had finished
            raise self._terminated(subcommand, "SIGTERM", Terminated.EXIT_STATUS) from None
        except SystemExit:  # Lightning's exit(1) after Ctrl-C, with no word of how to resume
            if getattr(self, "trainer", None) is None or self.trainer.state.status != TrainerStatus.INTERRUPTED:
                raise
            raise self._terminated(subcommand, "Ctrl-C (SIGINT)", Terminated.INTERRUPTED) from None

    def _terminated(self, subcommand: str, how: str, status: int) -> Terminated:
        if subcommand != "fit":
            return Terminated(f"`{subcommand}` was stopped by {how} before it finished",
                              "nothing it wrote is complete; rerun the same command", status)
        stopped = f"`fit` was stopped by {how} at step {self.trainer.global_step}, before it finished"
        folder = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        last = Path(folder) / "last.ckpt" if folder else None
        if last is None or not (last.is_file() or is_zero_folder(last)):
            return Terminated(stopped, "no checkpoint had been saved yet; rerun the same command to start it again", status)
        step = read_checkpoint_record(last, "--ckpt_path")["global_step"]
        return Terminated(stopped, f"its last checkpoint, {last}, is at step {step}: rerun the same command with "
                                   "--ckpt_path last to continue from there", status)

    def _own_eval_folder(self, config) -> None:
        """An evaluation logged into a training run's folder would replace its metrics.csv and config.yaml:
        it writes into <run>/<subcommand>/ instead (results.json, predictions.jsonl, its own config)."""
        run = logger_dir(config.as_dict().get("trainer") or {})
        if run is None or not is_training_run(run):
            return
        logger = config.trainer.logger[0] if isinstance(config.trainer.logger, list) else config.trainer.logger
        version = logger.init_args.version
        logger.init_args.version = f"{version}/{self.subcommand}" if version not in ("", None) else self.subcommand
        rank_zero_info(f"{self.subcommand}: {run} is a training run; writing into {run / self.subcommand}")

    def before_fit(self) -> None:
        self._check_ckpt_path()
        if hasattr(self.model, "stage"):
            check_continued_pretrain({**self.config[self.subcommand].as_dict(), "overwrite": self.overwrite}, self.model.stage)
        MetricsLog.keep_history(self.trainer, self._resume_checkpoint())
        self.datamodule.prepare_data()
        self.datamodule.setup("fit")  # idempotent: Lightning's own setup call reuses the datasets
        if hasattr(self.model, "prepare"):
            self.model.prepare(self.datamodule)

    def before_test(self) -> None:
        self._check_ckpt_path()
        # Lightning creates the logger's folder before it sets the data up: bad data must fail first
        self.datamodule.prepare_data()
        self.datamodule.setup(self.subcommand)
        if hasattr(self.datamodule, "require_examples"):
            self.datamodule.require_examples(self.subcommand)

    before_validate = before_predict = before_test

    def _check_ckpt_path(self) -> None:
        """A checkpoint of another stage or backbone would fail deep in load_state_dict: say so first."""
        path = self.config[self.subcommand].get("ckpt_path")
        if not path or path in CKPT_ALIASES or not hasattr(self.model, "describe"):
            return  # aliases resolve later
        record = read_checkpoint_record(path, "--ckpt_path")
        provenance = Provenance.of(record, path, "--ckpt_path").verify(
            [self.model.stage], self.model.backbone_spec,
            hint=f"This config is the {self.model.stage!r} stage: give the config.yaml saved beside the checkpoint, "
                 "or a checkpoint of this stage.")
        if "state_dict" in record:  # a DeepSpeed folder's module states are laid out its own way
            provenance.verify_weights(record["state_dict"], self.model.state_dict(), self.model.describe().get("architecture", {}),
                                      hint="Give the settings it was trained with (the config.yaml saved in its run "
                                           "folder), or a checkpoint of this architecture (nothing was written).",
                                      reloaded=self.model.theta0_weights())

    def _resume_checkpoint(self) -> Path | None:
        """The file `--ckpt_path` resumes from (`last`: where ModelCheckpoint(save_last=True) writes it)."""
        path = self.config[self.subcommand].get("ckpt_path")
        callback, logger = self.trainer.checkpoint_callback, self.trainer.logger
        if path == "last" and callback is not None and logger is not None:
            path = Path(callback.dirpath or Path(logger.log_dir) / "checkpoints") / "last.ckpt"
        return Path(path) if path and (Path(path).is_file() or is_zero_folder(path)) else None

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        """Every run writes its artifacts through `artifact_callbacks`, and its checkpoint files beside their
        name (`AtomicCheckpointIO`); with a progress bar on and none configured, the step-counting one."""
        configured = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured) \
                and _RICH_AVAILABLE:
            callbacks = [*callbacks, StepProgressBar()]
        trainer = super()._instantiate_trainer(config, [*callbacks, *artifact_callbacks(self.output_claim)])
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a configured plugin is the user's choice
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


@contextmanager
def _quiet_if_only_locks(folder: Path | None) -> Iterator[None]:
    """θ0's output_dir is inside its run folder (`theta0/model`), so the output_dir's lock, held from the start
    of the fit, is in the run folder before the logger writes there: Lightning would warn that a fresh run's
    folder "exists and is not empty" and that "previous log files" will be deleted. Not when the lock is all."""
    with warnings.catch_warnings():
        if folder is not None and folder.is_dir() and all(entry.name.endswith(LOCK_SUFFIX) for entry in folder.iterdir()):
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        yield


class _NoAdvertising(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_third_parties() -> None:
    """Messages that are not the user's business: Lightning's product tips, a torch deprecation inside
    Lightning's own code, and DeepSpeed's "unable to detect" warning on a machine without a GPU."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertising) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdvertising())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when DeepSpeed is first imported


def run_cli(args: list[str] | None = None, run: bool = True, cli_class: type[TAGICLI] = TAGICLI) -> TAGICLI:
    # `args` is how `main` and the pipeline pass argv; Lightning warns when sys.argv is also set.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # The data modules save and restore their position themselves (tagi.data.sampler), so a
    # mid-epoch resume is exact; Lightning cannot see that and warns otherwise.
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
    # test/validate/predict log into their own folder, and a resume may spell the run folder another way:
    # ModelCheckpoint then skips reloading its best-k bookkeeping, which no shipped config uses (no monitor).
    warnings.filterwarnings("ignore", message="The dirpath has changed from")
    quiet_third_parties()
    # Help shows each config field's docstring (training/config.py), not only its type. Reading them
    # slows every parse (twice the parser build time), so only help turns it on.
    argv = sys.argv[1:] if args is None else args
    check_config_arguments(argv)
    wants_help = any(arg in ("-h", "--help") or arg.split("=")[0].endswith(".help") for arg in argv)
    set_parsing_settings(docstring_parse_attribute_docstrings=wants_help)  # a global setting: set on every call
    return cli_class(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveConfig,
        parser_class=ShortUsageParser,
        parser_kwargs={"prog": "tagi"},
        args=args,
        run=run,  # False: parse and build model, data and trainer, without a subcommand
    )
