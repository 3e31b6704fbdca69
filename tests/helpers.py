"""Shared by the CLI-level tests: a tiny backbone, a few steps per stage, runs in a scratch folder."""

import functools
import json
import os
import shutil
from pathlib import Path

from tagi.training.cli import TAGICLI, run_cli

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


class ParseOnly(TAGICLI):
    """The CLI's parser and links; nothing is checked against the disk or built."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


@functools.lru_cache(maxsize=None)
def resolved(files: tuple[str, ...], overrides: tuple[str, ...] = ()) -> dict:
    """The fit config these files (then `overrides`, `--key=value`) give, as the CLI resolves it (the list of
    files itself left out)."""
    args = ["fit", *(arg for path in files for arg in ("--config", path)), *overrides]
    config = run_cli(args, cli_class=ParseOnly).config["fit"]
    return {key: value for key, value in config.clone().as_dict().items() if key != "config"}


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


TEACHERS = Path("teachers/t")
PRETRAIN = Path("checkpoints/demo/pretrain/checkpoints/last.ckpt")


def train_shared_stages(root: Path) -> Path:
    """Teachers and a stage-2 checkpoint, trained in `root` (the `trained_stages` fixture, once per test run)."""
    previous = os.getcwd()
    os.chdir(root)
    try:
        fit_teachers(str(TEACHERS))
        words = "the cat sat on a mat while an old dog slept near the warm fire".split()
        corpus = root / "corpus.jsonl"  # a small corpus of its own: `data.init_args.source` is a user's C4-style file
        corpus.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i]) * 3}) + "\n" for i in range(12)))
        fit("pretrain", f"--data.init_args.source={corpus}")
    finally:
        os.chdir(previous)
    return root


def stages_in(trained: Path, workdir: Path) -> dict[str, Path]:
    """A copy of the shared runs (teacher and pretrain run folders, the teachers, the generated data) in `workdir`."""
    for name in ("teachers", "checkpoints", "runs"):
        shutil.copytree(trained / name, workdir / name, dirs_exist_ok=True)
    return {"teachers": workdir / TEACHERS, "pretrain": workdir / PRETRAIN}
