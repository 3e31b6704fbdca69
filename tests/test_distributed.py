"""Every stage on CPU with 2 DDP processes (gloo): a valid checkpoint, artifacts written once by rank 0,
validation counted once per example across ranks, and a loss curve like the single-process one.

Each run is a `python -m tagi fit` subprocess (DDP launches its second process by re-running the
command). The finetune stage reads the teachers and stage-2 checkpoint the DDP runs wrote."""

import csv
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import T5ForConditionalGeneration

from helpers import ROOT, TINY, chdir_scratch, config

pytestmark = pytest.mark.e2e  # whole stages through the CLI; `-m "not e2e"` skips them

STEPS = 6
COMMON = [TINY, f"--trainer.max_steps={STEPS}", f"--trainer.val_check_interval={STEPS}", "--trainer.log_every_n_steps=1",
          "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=4",
          "--data.init_args.max_test_instances_per_task=2"]
HELD_OUT = 10 * 2  # held-out tasks × max_test_instances_per_task: what all but the teacher stage validate on
CLUSTERS = 7  # train categories: the teacher stage's max_steps is per cluster, so it takes 7 × STEPS steps
STAGE_ARGS = {
    "theta0": ["--model.init_args.output_dir=theta0-{mode}"],
    "teacher": ["--model.init_args.output_dir=teachers-{mode}", "--data.init_args.val_instances_per_task=1"],
    "pretrain": ["--model.init_args.architecture.generator=hart"],
    "finetune": ["--model.init_args.init_from=ddp/pretrain/checkpoints/last.ckpt", "--model.init_args.teachers=teachers-ddp",
                 "--model.init_args.architecture.generator=hart",
                 "--model.init_args.distillation.consistency_weight=0.1"],  # HART state: all-gathered across ranks
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    yield from chdir_scratch(tmp_path_factory, "ddp")


def run(stage: str, mode: str) -> dict:
    """One fit; `mode` "ddp" (2 processes) or "single". Returns the completion marker."""
    distributed = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"] if mode == "ddp" else []
    extra = [arg.format(mode=mode) for arg in STAGE_ARGS[stage]]
    folder = ["--trainer.logger.save_dir=.", f"--trainer.logger.name={mode}", f"--trainer.logger.version={stage}"]
    result = subprocess.run([sys.executable, "-m", "tagi", "fit", "--config", config(stage), *COMMON, *extra, *folder, *distributed],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((Path(mode) / stage / "complete.json").read_text())


def train_losses(mode: str, stage: str) -> list[float]:
    rows = csv.DictReader((Path(mode) / stage / "metrics.csv").open())
    key = "train/loss" if stage == "finetune" else "train/ce"
    return [float(row[key]) for row in rows if row.get(key)]


@pytest.mark.parametrize("stage", ["theta0", "teacher", "pretrain", "finetune"])
def test_stage_runs_data_parallel_on_two_cpu_processes(workdir, stage):
    marker = run(stage, "ddp")
    steps = STEPS * (CLUSTERS if stage == "teacher" else 1)
    assert marker["global_step"] == steps
    checkpoint = torch.load(marker["last_checkpoint"], weights_only=False)
    assert checkpoint["tagi"]["stage"] == stage and checkpoint["state_dict"]

    if stage != "teacher":  # held-out validation: every example once, synced across ranks
        assert marker["metrics"]["val/count"] == HELD_OUT
    if stage == "teacher":  # rank 0 wrote each cluster's adapter once, atomically
        assert sorted(path.name for path in Path("teachers-ddp").iterdir()) == [
            "case", "counting", "deletion", "filtering", "selection", "spelling", "word-order"]  # the categories with train tasks
    if stage == "theta0":
        assert T5ForConditionalGeneration.from_pretrained("theta0-ddp").config.d_model == 32
    if stage == "finetune":  # the HART/teacher state lives on every rank; the checkpoint has it once
        assert "consistency_mean" in checkpoint["state_dict"]

    ddp = train_losses("ddp", stage)
    run(stage, "single")  # finetune: on the same DDP-written teachers and stage-2 checkpoint
    single = train_losses("single", stage)
    assert len(ddp) == len(single) == steps and all(torch.isfinite(torch.tensor(ddp)))
    # Same initial weights, and rank 0's first batch is the single run's first batch, so the first losses
    # agree to float rounding; the C4 stream (pretrain) shards by document instead, so only roughly there.
    tolerance = 0.1 if stage == "pretrain" else 1e-4
    assert abs(ddp[0] - single[0]) <= tolerance * abs(single[0])


def test_deepspeed_zero2_bf16_config_parses_and_builds_a_trainer(workdir, monkeypatch):
    """The real-scale trainer part, on this CPU machine: parse it and build the Trainer (running it needs CUDA)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from tagi.training.cli import run_cli

    monkeypatch.setattr("tagi.training.cli.check_config", lambda config: None)  # it refuses DeepSpeed without CUDA (tested)
    setting = ROOT / "configs/sni-t5-base"
    cli = run_cli(["--config", str(setting / "finetune.yaml"), TINY,  # it names parts/trainer.yaml
                   "--trainer.accelerator=cpu", "--trainer.devices=1", "--data.init_args.data_dir=synthetic",
                   "--data.init_args.tokenizer=synthetic"], run=False)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, DeepSpeedStrategy)
    assert strategy.config["zero_optimization"]["stage"] == 2
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.gradient_clip_val == 1.0
    assert cli.trainer.checkpoint_callback.save_last and cli.model.stage == "finetune"


def _evaluate_on_rank(rank: int, port: int, out: str) -> None:
    """One process of `test_rank_accuracy_is_counted_across_processes`: rank 0 has two multiple-choice rows,
    rank 1 none."""
    from transformers import ByT5Tokenizer

    from tagi.eval.evaluation import Evaluation

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A process left waiting in a collective fails after 30 s instead of hanging the test run.
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
    tok = ByT5Tokenizer()
    evaluation = Evaluation([("t", "c")], tok)

    def prefers_first_option(rows, labels):  # logits (R, Y, V) favouring option "a"'s token
        logits = torch.zeros(labels.shape[0], labels.shape[1], len(tok))
        logits[..., tok("a").input_ids[0]] = 5.0
        return logits

    if rank == 0:
        batch = dict(references=[["a"], ["b"]], task_names=["t", "t"], options=[[tok("a").input_ids, tok("b").input_ids]] * 2)
        evaluation.update(batch, ["a", "a"], prefers_first_option)
    else:
        evaluation.update(dict(references=[["x"]], task_names=["t"]), ["x"], prefers_first_option)
    passes = [evaluation.compute()]
    evaluation.update(dict(references=[["x"]], task_names=["t"]), ["x"], prefers_first_option)
    passes.append(evaluation.compute())
    Path(out, f"rank{rank}.json").write_text(json.dumps(passes))
    torch.distributed.destroy_process_group()


def test_rank_accuracy_is_counted_across_processes(tmp_path):
    """A process without multiple-choice rows still joins the accuracy's sync (it would hang the other one
    otherwise), and every process reports the global count."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_evaluate_on_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        first, second = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert first["rank_count"] == 2 and first["rank_accuracy"] == 50.0 and first["count"] == 3
        assert "rank_count" not in second
