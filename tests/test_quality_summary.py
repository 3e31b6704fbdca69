"""benchmarks/quality.py's summary: the docs/results schema, controls, validation and paired intervals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402
from tagi.eval import results  # noqa: E402
from tagi.eval.results import render_block  # noqa: E402


def predictions(path: Path, hits: list[bool]) -> str:
    rows = [{"task": "t", "id": str(i), "input": "x", "prediction": "yes" if hit else "no", "references": ["yes"]}
            for i, hit in enumerate(hits)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def run(tmp_path: Path, name: str, seed: int, hits: list[bool], controls: dict | None = None) -> dict:
    em = 100 * sum(hits) / len(hits)
    return {"test": {"exact_match": em, "rougeL": em}, "controls": controls or {"real": em},
            "validation": {"exact_match": em / 2, "rougeL": em / 2},
            "predictions": predictions(tmp_path / f"{name}-{seed}.jsonl", hits)}


def test_summary_has_the_issue_schema_and_paired_intervals(tmp_path):
    raw = {
        "no-instruction": {s: run(tmp_path, "n", s, [False] * 18 + [True] * 2) for s in (0, 1)},
        "concat": {s: run(tmp_path, "c", s, [True] * 10 + [False] * 10, {"real": 50.0, "empty": 5.0}) for s in (0, 1)},
        "tagi": {s: run(tmp_path, "t", s, [True] * (10 + s) + [False] * (10 - s), {"real": 50.0, "empty": 0.0})
                 for s in (0, 1)},
    }
    data = quality.summary(raw, "demo", 12.5)
    assert data["setting"] == "demo" and data["metric"] == "exact_match" and data["split"] == "test"
    assert set(data["variants"]["tagi"]) == {"label", "per_seed", "mean", "std", "controls"}
    assert data["variants"]["tagi"]["per_seed"]["1"]["exact_match"] == 55.0
    assert data["variants"]["tagi"]["mean"]["exact_match"] == 52.5 and data["variants"]["tagi"]["std"]["exact_match"] > 0
    assert "controls" not in data["variants"]["no-instruction"]  # it reads no instruction
    assert data["variants"]["concat"]["controls"] == {"real": 50.0, "empty": 5.0}
    assert data["validation"]["tagi"]["mean"]["exact_match"] == 26.25
    assert set(data["paired"]) == {"no-instruction - concat", "tagi - concat", "tagi - no-instruction"}
    no_instruction = data["paired"]["no-instruction - concat"]
    assert no_instruction["mean"] == -40.0 and no_instruction["ci95"][1] < 0  # clearly below concatenation
    tagi = data["paired"]["tagi - concat"]
    assert tagi["mean"] == 2.5 and tagi["ci95"][0] <= 2.5 <= tagi["ci95"][1]
    assert data["checks"] == {"no-instruction / concat, mean exact match":
                              "validation 0.20, test 0.20 (the suite asks for at most 0.33)"}
    text = render_block("quality-demo", data)
    assert "-40.00" in text and "+2.50" in text and "test EM" in text and "validation 0.20, test 0.20" in text


def test_last_validation_reads_the_final_val_row(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/ce,val/exact_match,val/rougeL\n0,9,1.0,,\n0,99,,10.0,20.0\n0,109,0.5,,\n0,199,,12.5,30.0\n")
    assert quality.last_validation(csv) == {"exact_match": 12.5, "rougeL": 30.0}


def test_a_run_is_reused_only_for_the_recipe_it_was_trained_with(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "architecture.yaml").write_text("generator: mlp\n")
    config = tmp_path / "finetune.yaml"
    config.write_text("model:\n  init_args:\n    architecture: parts/architecture.yaml\n    lr: 0.003\n")
    ablation = tmp_path / "no-kl.yaml"
    ablation.write_text("model.init_args.distillation.kl_weight: 0\n")
    wanted = quality.recipe([str(config), str(ablation)], ["--seed_everything=0"])
    assert len(wanted["configs"]) == 3  # the part the config names and the ablation are part of the recipe

    run = tmp_path / "run"
    run.mkdir()
    (run / quality.RECIPE).write_text(json.dumps(wanted))
    quality.check_recipe(run, wanted)  # same recipe: reused
    (tmp_path / "parts" / "architecture.yaml").write_text("generator: hart\n")
    with pytest.raises(SystemExit, match=r"another recipe \(configs that differ: \[.*architecture\.yaml"):
        quality.check_recipe(run, quality.recipe([str(config), str(ablation)], ["--seed_everything=0"]))
    with pytest.raises(SystemExit, match=r"configs that differ: \[.*no-kl\.yaml"):
        quality.check_recipe(run, quality.recipe([str(config)], ["--seed_everything=0"]))  # the ablation left out
    with pytest.raises(SystemExit, match=r"overrides that differ: \['--seed_everything=0', '--seed_everything=1'\]"):
        quality.check_recipe(run, {**wanted, "args": ["--seed_everything=1"]})


def test_a_damaged_recipe_is_one_error_line(tmp_path):
    """recipe.json that is not JSON (or not a recipe) was a JSONDecodeError / KeyError traceback."""
    run = tmp_path / "run"
    run.mkdir()
    for damage in ("{not json", "[]", '{"configs": {}}'):
        (run / quality.RECIPE).write_text(damage)
        with pytest.raises(SystemExit, match=rf"^error: {run / quality.RECIPE}: not a recipe this script wrote \(.*\); "
                                             rf"delete the run folder {run} to retrain it"):
            quality.check_recipe(run, {"configs": {}, "args": []})


def test_a_finished_theta0_is_reused_only_for_its_recipe(tmp_path):
    """Only the later stages' recipes were checked: a finished θ0 trained with other settings was reused silently."""
    folder = tmp_path / "seed0"
    chain = quality.Chain("demo", 0, folder, folder / quality.THETA0, quality.Ledger(tmp_path / "seconds.json"))
    (folder / "theta0").mkdir(parents=True)
    (folder / "theta0" / "last.ckpt").write_bytes(b"")  # a finished stage's marker names its checkpoint, which is there
    (folder / "theta0" / "complete.json").write_text(json.dumps({"last_checkpoint": str(folder / "theta0" / "last.ckpt"),
                                                                 "global_step": 4}))
    wanted = quality.recipe(chain.config("theta0.yaml"), [*chain.seed_args(), "--model.init_args.backbone.seed=0",
                                                          f"--model.init_args.output_dir={folder / quality.THETA0}"])
    (folder / "theta0" / quality.RECIPE).write_text(json.dumps({**wanted, "args": ["--trainer.max_steps=3"]}))
    with pytest.raises(SystemExit, match=r"seed0/theta0 was trained from another recipe"):
        chain.ensure_theta0()
    (folder / "theta0" / quality.RECIPE).write_text(json.dumps(wanted))
    assert chain.ensure_theta0() == folder / quality.THETA0  # its own recipe: reused, nothing trained


def test_the_pipelines_theta0_is_shared_only_for_its_recipe(tmp_path, monkeypatch):
    """--share-theta0 reused the pipeline's θ0 without a recipe check: one a trial trained with --overrides (10
    steps) was the θ0 of every seed, silently. The pipeline records the recipe of each stage it trains."""
    from tagi import pipeline

    run_dir = tmp_path / "checkpoints/demo"  # the pipeline's run `demo`, where --share-theta0 looks

    def trains(args):  # the stage's fit, as far as fit_stage can see it: a finished run folder
        folder = run_dir / "theta0"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "last.ckpt").write_bytes(b"")
        (folder / "complete.json").write_text(json.dumps({"last_checkpoint": str(folder / "last.ckpt"), "global_step": 10}))

    monkeypatch.setattr(pipeline, "_run", trains)
    chain = quality.Chain("demo", 1, tmp_path / "seed1", run_dir / quality.THETA0, quality.Ledger(tmp_path / "seconds.json"),
                          shared_theta0=True)
    output_dir = f"--model.init_args.output_dir={chain.theta0}"
    pipeline.fit_stage("theta0", chain.config("theta0.yaml"), run_dir, ["--trainer.max_steps=10", output_dir], force=False)
    with pytest.raises(SystemExit, match=r"theta0 was trained from another recipe .*--trainer.max_steps=10.*--force=true"):
        chain.ensure_theta0()
    pipeline.fit_stage("theta0", chain.config("theta0.yaml"), run_dir, [output_dir], force=True)  # the pipeline, retrained
    assert chain.ensure_theta0() == chain.theta0  # its recipe is the one --share-theta0 wants: shared


def test_a_test_is_reused_only_if_written_after_its_checkpoint(tmp_path, monkeypatch):
    """A run retrained into its folder (after its recipe changed) has a checkpoint of the same name."""
    chain = quality.Chain("demo", 0, tmp_path, tmp_path / "theta0", quality.Ledger(tmp_path / "seconds.json"))
    checkpoint = tmp_path / "tagi" / "last.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"retrained")
    (tmp_path / "tagi-test").mkdir()
    results = tmp_path / "tagi-test" / quality.RESULTS_JSON
    results.write_text(json.dumps({"checkpoint": str(checkpoint)}))
    os.utime(results, ns=(checkpoint.stat().st_mtime_ns - 10**9,) * 2)  # the test of the run before
    tested = []
    monkeypatch.setattr(quality, "score_checkpoint", lambda *args: tested.append(args))
    quality.test_once(chain, ["finetune.yaml"], str(checkpoint), [], "tagi-test")
    assert len(tested) == 1
    os.utime(results)  # now newer than the checkpoint: reused
    quality.test_once(chain, ["finetune.yaml"], str(checkpoint), [], "tagi-test")
    assert len(tested) == 1


def test_the_ratio_check_says_when_concatenation_scores_zero():
    zero = {"mean": {"exact_match": 0.0}}
    data = {"variants": {"no-instruction": {"mean": {"exact_match": 3.0}}, "concat": zero},
            "validation": {"no-instruction": {"mean": {"exact_match": 1.0}}, "concat": zero}}
    assert quality.checks(data) == {"no-instruction / concat, mean exact match":
                                    "validation undefined (concat scores 0), test undefined (concat scores 0) "
                                    "(the suite asks for at most 0.33)"}


def test_the_seconds_total_counts_only_this_tables_runs(tmp_path):
    ledger = quality.Ledger(tmp_path / "seconds.json")
    ledger.add("seed0/tagi", 100.0)
    ledger.add("seed0/tagi-lr1e-2", 50.0)  # another table's run
    again = quality.Ledger(tmp_path / "seconds.json")  # a later invocation reusing seed0/tagi only
    again.add("seed0/tagi", None)
    assert again.total() == 100.0 and ledger.total() == 150.0


def test_an_untrained_variant_is_tested_once_for_every_seed_and_again_when_its_recipe_changes(tmp_path, monkeypatch):
    """zero-shot has no checkpoint: its one test, beside the seeds' folders, is reused while its config and
    overrides are the same."""
    config = tmp_path / "zero-shot.yaml"
    config.write_text("model: {}\n")
    tested = []

    def score(config_files, folder, checkpoint, args, name):
        tested.append(checkpoint)
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / quality.RESULTS_JSON).write_text(json.dumps({"checkpoint": None}))

    monkeypatch.setattr(quality, "score_checkpoint", score)
    ledger = quality.Ledger(tmp_path / "seconds.json")
    for seed in (0, 1):
        chain = quality.Chain("smollm2-ni-v1", seed, tmp_path / f"seed{seed}", tmp_path / "theta0", ledger)
        quality.test_once(chain, [str(config)], None, [], "zero-shot-test", tmp_path)
    assert tested == [None]  # the second seed reused the first's test
    config.write_text("model: {init_args: {input: plain}}\n")
    quality.test_once(chain, [str(config)], None, [], "zero-shot-test", tmp_path)
    assert tested == [None, None]


def test_an_untrained_variant_is_summarised_without_a_validation_run(tmp_path, monkeypatch):
    """zero-shot trains nothing, so it has no metrics.csv: its row has test scores and controls, no validation,
    and the setting's headline (ROUGE-L on SmolLM2's free-text answers) leads the table and the intervals."""
    def score(config_files, folder, checkpoint, args, name):
        (folder / name).mkdir(parents=True, exist_ok=True)
        overall = {"exact_match": 10.0, "rougeL": 40.0 if name == "zero-shot-test" else 20.0}
        (folder / name / quality.RESULTS_JSON).write_text(json.dumps({"checkpoint": None, "overall": overall}))
        predictions(folder / name / "predictions.jsonl", [True, False] if name == "zero-shot-test" else [False, False])

    monkeypatch.setattr(quality, "score_checkpoint", score)
    ledger = quality.Ledger(tmp_path / "seconds.json")
    chain = quality.Chain("smollm2-ni-v1", 0, tmp_path / "seed0", tmp_path / "theta0", ledger)
    zero_shot = quality.run_variant(chain, "zero-shot", ["empty"])
    assert zero_shot["validation"] is None and zero_shot["controls"] == {"real": 40.0, "empty": 20.0}
    assert Path(zero_shot["predictions"]).parent == tmp_path / "zero-shot-test"  # beside the seeds' folders
    tagi = run(tmp_path, "t", 0, [False, False])
    data = quality.summary({"zero-shot": {0: zero_shot}, "tagi": {0: tagi}}, "smollm2-ni-v1", 1.0)
    assert data["metric"] == "rougeL" and "zero-shot" not in data["validation"] and "tagi" in data["validation"]
    assert data["paired"]["tagi - zero-shot"]["mean"] == -50.0  # one of two answers lost, on ROUGE-L
    text = render_block("quality-smollm2-ni-v1", data)
    assert "test ROUGE-L" in text and "-50.00" in text


def test_a_stopped_run_says_how_to_resume_this_script(monkeypatch, capsys):
    """SIGTERM (or Ctrl-C) inside a stage ends quality.py with one line naming this script and the shell's status."""
    from tagi.errors import Terminated

    def stopped(argv):
        raise Terminated("`test` was stopped by SIGTERM before it finished", "rerun the same `tagi pipeline` command")

    monkeypatch.setattr(quality, "main", stopped)
    assert quality.run([]) == 143
    err = capsys.readouterr().err
    assert "rerun the same quality.py command" in err and "tagi pipeline" not in err


def test_a_table_made_of_runs_from_several_commits_says_so(tmp_path):
    """Runs are reused across invocations whatever the code: the ledger keeps the commit that made each, and the
    footer names every commit when they are not all the table's own."""
    first = quality.Ledger(tmp_path / "seconds.json", "a" * 40)
    first.add("seed0/tagi", 100.0)
    first.add("seed0/concat", 80.0)
    later = quality.Ledger(tmp_path / "seconds.json", "b" * 40 + "-dirty")
    later.add("seed0/tagi", None)  # reused: still made at the first commit
    later.add("seed0/concat", 5.0)  # resumed at the later one: made at both
    later.add("seed0/hint", 40.0)
    later.add("seed0/old", None)  # made before the ledger kept commits
    assert later.made_at() == {"aaaaaaaaaa": 1, "aaaaaaaaaa+bbbbbbbbbb-dirty": 1, "bbbbbbbbbb-dirty": 1, "not recorded": 1}
    data = {"commit": "b" * 40, "seconds": 1.0, "made_at": later.made_at()}
    assert results._footer(data).endswith("; runs and tests made at aaaaaaaaaa (1), aaaaaaaaaa+bbbbbbbbbb-dirty (1), "
                                          "bbbbbbbbbb-dirty (1), not recorded (1)")
    assert results._footer({**data, "made_at": {"bbbbbbbbbb": 4}}) == "commit bbbbbbbbbb; 1.00 s of runs"


def test_runs_from_an_earlier_commit_count_the_code_files_changed_since(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    for path in ("tagi/model.py", "configs/demo/finetune.yaml", "README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("one\n")
    git("add", ".")
    git("commit", "-qm", "first")
    first = git("rev-parse", "HEAD")
    for path in ("tagi/model.py", "configs/demo/finetune.yaml", "README.md"):
        (tmp_path / path).write_text("two\n")
    git("commit", "-qam", "second")
    assert quality.changed_since([first, git("rev-parse", "HEAD")], tmp_path) == {first: 2, git("rev-parse", "HEAD"): 0}
    assert quality.changed_since([first + "-dirty"], tmp_path) == {first + "-dirty": 2}
    assert quality.changed_since(["0" * 40], tmp_path) == {}  # a commit this clone lacks: nothing claimed
