"""Shared by the CLI-level tests: a tiny backbone, a few steps per stage, runs in a scratch folder."""

import os
from pathlib import Path

from tagi.training.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.batch_size=4",
    "--data.init_args.max_test_instances_per_task=2",
]
TINY_SPEC = {"name": "tiny", "tiny_config": {"d_model": 32, "num_layers": 2, "num_heads": 2}, "seed": 0}
TINY = f"--model.init_args.backbone={TINY_SPEC}".replace("'", '"')


def chdir_scratch(tmp_path_factory, name: str):
    """Runs happen in a scratch folder (relative paths in the configs land there); yields it."""
    path = tmp_path_factory.mktemp(name)
    previous = os.getcwd()
    os.chdir(path)
    yield path
    os.chdir(previous)


def config(stage: str) -> str:
    return str(ROOT / f"configs/demo/{stage}.yaml")


def fit(stage: str, *extra: str):
    return run_cli(["fit", "--config", config(stage), TINY, *FAST, *extra])


def fit_teachers(out_dir: str = "teachers/t"):
    """The teacher stage, one validation example per task: the teachers later stages read."""
    return fit("teacher", f"--model.init_args.output_dir={out_dir}", "--data.init_args.val_instances_per_task=1")
