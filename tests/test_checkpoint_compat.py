"""A checkpoint written before the package layout changed (tests/fixtures/pre-layout-pretrain.ckpt:
a tiny pretrain-stage student, 3 steps, written by commit 4a71eda) still loads and computes the
logits it computed then. Checkpoints hold weights and plain `describe()` records, no class paths,
so moving code must not break the runs users already have. Stage 0's older record name is read too."""

import json
from pathlib import Path

import pytest
import torch

from helpers import TINY
from tagi.inference.student import Student

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_checkpoint_from_before_the_layout_move_loads_and_gives_the_same_logits():
    expected = torch.load(FIXTURES / "pre-layout-pretrain.expected.pt")
    student = Student.from_checkpoint(FIXTURES / "pre-layout-pretrain.ckpt")
    task = student.encode(expected["instruction"])
    # The ids the fixture was computed on: the synthetic tokenizer then added no </s> (it now does, as T5's)
    batch = student.tokenizer(expected["inputs"], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = student.model(task, batch["input_ids"], batch["attention_mask"],
                               decoder_input_ids=expected["decoder_input_ids"], merge=True).logits
    # Other CPUs round differently in the last bits; a wrong weight or path would move logits by ~1.
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.e2e
def test_a_stage_zero_checkpoint_recorded_as_full_is_evaluated_as_theta0(tmp_path, monkeypatch):
    """Stage 0 was recorded as "full" before it had one name: `--ckpt_path` of such a checkpoint passes the
    stage check of the theta0 config and is tested."""
    from helpers import config, fit
    from tagi.training.cli import run_cli

    monkeypatch.chdir(tmp_path)
    fit("theta0", "--model.init_args.output_dir=theta0", "--trainer.max_steps=2")
    checkpoint = torch.load(tmp_path / "checkpoints/demo/theta0/checkpoints/last.ckpt", weights_only=False)
    checkpoint["tagi"]["stage"] = "full"
    torch.save(checkpoint, tmp_path / "old-theta0.ckpt")
    run_cli(["test", "--config", config("theta0"), TINY, "--trainer.enable_progress_bar=false",
             "--data.init_args.max_test_instances_per_task=1", "--trainer.logger.init_args.name=old",
             f"--ckpt_path={tmp_path / 'old-theta0.ckpt'}"])
    results = json.loads((tmp_path / "checkpoints/demo/old/results.json").read_text())
    assert results["global_step"] == 2 and results["overall"]["count"] > 0
