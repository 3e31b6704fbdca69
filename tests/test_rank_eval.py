"""Rank classification inside `test`: multiple-choice instances (with "options") are also ranked."""

import pytest
import json
from pathlib import Path

from tagi.training.cli import run_cli
from tagi.data.sni import read_task
from tagi.data.synthetic import write_suite

pytestmark = pytest.mark.e2e  # whole stages through the CLI; `-m "not e2e"` skips them

ROOT = Path(__file__).resolve().parents[1]
TINY = '--model.init_args.backbone={"name": "tiny", "tiny_config": {"d_model": 32, "num_layers": 2, "num_heads": 2}, "seed": 0}'


def with_options(suite: Path) -> int:
    """Give every held-out Selection instance two options whose ranking cannot change the verdict: the
    first half two copies of its answer (right whichever is chosen), the other half two other input
    words (wrong whichever is chosen). Rank accuracy must then be exactly 50."""
    added = 0
    for path in (suite / "tasks").glob("*selection_pick_second*.json"):
        raw = json.loads(path.read_text())
        for index, instance in enumerate(raw["Instances"]):
            answer = instance["output"][0]
            others = [w for w in instance["input"].split() if w != answer]
            instance["options"] = [answer, answer] if index % 2 == 0 else others[:2]
            added += 1
        path.write_text(json.dumps(raw))
    return added


def test_test_reports_rank_accuracy_for_instances_with_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = write_suite(tmp_path / "suite", num_instances=6)
    assert with_options(suite) == 6
    assert read_task(next((suite / "tasks").glob("*pick_second*.json"))).instances[0].options
    run_cli(["fit", "--config", str(ROOT / "configs/demo/theta0.yaml"), TINY, f"--data.init_args.data_dir={suite}",
             "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
             "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=4", "--model.init_args.output_dir=theta0"])
    checkpoint = tmp_path / "checkpoints/demo/theta0/checkpoints/last.ckpt"
    run_cli(["test", "--config", str(ROOT / "configs/demo/theta0.yaml"), TINY, f"--data.init_args.data_dir={suite}",
             "--trainer.enable_progress_bar=false", "--trainer.logger.init_args.name=report", f"--ckpt_path={checkpoint}"])
    overall = json.loads((tmp_path / "checkpoints/demo/report/results.json").read_text())["overall"]
    assert overall["rank_count"] == 6 and overall["rank_accuracy"] == 50.0
    assert overall["count"] == 10 * 6  # generation is still scored on every test instance
