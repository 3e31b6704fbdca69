import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagi.eval.results import (find_blocks, main, paired_bootstrap, per_example, render_block, render_readme,
                               untraced_numbers)

ROOT = Path(__file__).resolve().parents[1]

QUALITY = {
    "setting": "demo", "commit": "0123456789abcdef", "metric": "exact_match", "split": "test", "seconds": 1234.5,
    "variants": {
        "tagi": {"label": "hypernetwork LoRA",
                 "per_seed": {"0": {"rougeL": 30.0, "exact_match": 12.0}, "1": {"rougeL": 20.0, "exact_match": 10.0}},
                 "mean": {"rougeL": 25.0, "exact_match": 11.0}, "std": {"rougeL": 5.0, "exact_match": 1.0},
                 "controls": {"real": 11.0, "empty": 2.5}},
        "concat": {"per_seed": {"0": {"rougeL": 26.0, "exact_match": 9.0}, "1": {"rougeL": 24.0, "exact_match": 9.5}},
                   "mean": {"rougeL": 25.0, "exact_match": 9.25}, "std": {"rougeL": 1.0, "exact_match": 0.25}},
    },
    "validation": {"tagi": {"mean": {"rougeL": 28.0, "exact_match": 13.0}}},
    "paired": {"tagi - concat": {"metric": "exact_match", "mean": 1.75, "ci95": [-0.5, 4.0]}},
}
DEMO = {"setting": "demo", "commit": "fedcba9876543210", "split": "test", "metric": "exact_match", "seconds": 400.0,
        "stage_seconds": {"theta0": 168.0, "finetune": 149.0},
        "rows": {"student": {"rougeL": 25.87, "exact_match": 12.78}, "blanked": {"rougeL": 7.77, "exact_match": 2.22}}}


# --- paired bootstrap -----------------------------------------------------------------------------


def scores(values, metric="exact_match"):
    return {f"t/{i}": {metric: float(v), "rougeL": 0.0} for i, v in enumerate(values)}


def noisy(m, seeds=3, rng_seed=0):
    """A scores 1 with p 0.6, B with p 0.4 (independent): true mean difference 20 points."""
    rng = np.random.default_rng(rng_seed)
    a = {str(s): scores(100 * (rng.random(m) < 0.6)) for s in range(seeds)}
    b = {str(s): scores(100 * (rng.random(m) < 0.4)) for s in range(seeds)}
    return a, b


def test_bootstrap_of_identical_methods_is_exactly_zero():
    a, _ = noisy(50)
    out = paired_bootstrap(a, a, n_resamples=500)
    assert out == {"metric": "exact_match", "mean": 0.0, "ci95": [0.0, 0.0], "seeds": 3, "examples": 50}


def test_bootstrap_of_a_constant_shift_is_that_shift():
    _, b = noisy(40)
    a = {s: {k: {**v, "exact_match": v["exact_match"] + 10} for k, v in per.items()} for s, per in b.items()}
    out = paired_bootstrap(a, b, n_resamples=500)
    assert out["mean"] == 10.0
    assert out["ci95"][0] <= 10.0 <= out["ci95"][1]


def test_bootstrap_interval_covers_the_truth_and_narrows_with_more_examples():
    small, large = (paired_bootstrap(*noisy(m), n_resamples=2000) for m in (100, 1000))
    for out in (small, large):
        assert out["ci95"][0] < 20 < out["ci95"][1], out
        assert out["ci95"][0] < out["mean"] < out["ci95"][1]
    width = {m: o["ci95"][1] - o["ci95"][0] for m, o in ((100, small), (1000, large))}
    assert width[1000] < 0.6 * width[100], width


def test_bootstrap_is_deterministic_per_seed():
    a, b = noisy(80)
    assert paired_bootstrap(a, b, n_resamples=300, seed=3) == paired_bootstrap(a, b, n_resamples=300, seed=3)
    runs = {paired_bootstrap(a, b, n_resamples=300, seed=s)["ci95"][0] for s in range(4)}
    assert len(runs) > 1  # the seed does drive the resampling


def test_bootstrap_refuses_unpaired_inputs():
    a, b = noisy(10)
    b["1"].pop("t/7")
    with pytest.raises(ValueError, match=r"seed '1'.*t/7"):
        paired_bootstrap(a, b)
    with pytest.raises(ValueError, match="different seeds"):
        paired_bootstrap(a, {"0": b["0"]})


# --- per-example scores ---------------------------------------------------------------------------


def test_per_example_scores_a_predictions_file(tmp_path):
    rows = [("t1", "0", "Paris", ["paris."]), ("t1", "1", "Lyon", ["Paris"]),
            ("t2", "0", "the red cat", ["a red cat", "dog"])]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps({"task": t, "id": i, "input": "x", "prediction": p, "references": r}) + "\n"
                            for t, i, p, r in rows))
    out = per_example(path)
    assert list(out) == ["t1/0", "t1/1", "t2/0"]
    assert out["t1/0"] == {"rougeL": pytest.approx(100.0), "exact_match": 100.0}
    assert out["t1/1"] == {"rougeL": pytest.approx(0.0), "exact_match": 0.0}
    assert out["t2/0"]["exact_match"] == 0.0
    assert out["t2/0"]["rougeL"] == pytest.approx(200 / 3, abs=1e-4)  # LCS 2 of 3 tokens each way


def test_results_module_imports_without_torch():
    code = "import sys, tagi.eval.results; assert not {'torch', 'lightning'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- rendering ------------------------------------------------------------------------------------


def test_quality_renderer_writes_both_tables_and_the_footer():
    text = render_block("quality-demo", QUALITY)
    lines = text.splitlines()
    assert lines[0] == ("| variant | test EM | test EM per seed | test ROUGE-L | val EM "
                        "| test Δ vs reference [95% CI] |")
    assert lines[2] == ("| tagi — hypernetwork LoRA | 11.00 ± 1.00 | 12.00 / 10.00 | 25.00 ± 5.00 | 13.00 "
                        "| +1.75 [-0.50, 4.00] vs concat |")
    assert lines[3] == "| concat | 9.25 ± 0.25 | 9.00 / 9.50 | 25.00 ± 1.00 | – | – |"
    assert "| tagi — hypernetwork LoRA | 11.00 | – | – | 2.50 | – |" in lines
    assert not any(line.startswith("| concat") for line in lines[4:])  # no controls, no controls row
    assert lines[-1].startswith("Split: test; metric: exact match (headline)")
    assert lines[-1].endswith("commit 0123456789; 1234.50 s of runs.")
    assert "**" not in text


def test_quality_renderer_omits_the_controls_table_when_no_variant_has_controls():
    data = {**QUALITY, "variants": {"concat": QUALITY["variants"]["concat"]}}
    assert "real" not in render_block("q", data)


def test_demo_renderer():
    assert render_block("demo", DEMO) == (
        "| model (test tasks) | exact match | ROUGE-L |\n|---|---:|---:|\n"
        "| student | 12.78 | 25.87 |\n| blanked | 2.22 | 7.77 |")  # no commit or seconds: a rerun renders the same


def test_render_block_refuses_an_unknown_shape():
    with pytest.raises(ValueError, match="odd"):
        render_block("odd", {"setting": "demo"})


# --- README blocks --------------------------------------------------------------------------------


def results_dir(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "quality-demo.json").write_text(json.dumps(QUALITY))
    (folder / "demo.json").write_text(json.dumps(DEMO))
    return folder


README = ("# Title\n\nIntro 1.23 stays.\n\n<!-- results: demo -->\nstale 99.99\n<!-- /results -->\n\nMiddle.\n"
          "<!-- results: quality-demo -->\n<!-- /results -->\nEnd.\n")


def test_render_readme_replaces_blocks_keeps_the_rest_and_is_idempotent(tmp_path):
    folder = results_dir(tmp_path)
    out = render_readme(README, folder)
    assert out.startswith("# Title\n\nIntro 1.23 stays.\n\n<!-- results: demo -->\n| model (test tasks)")
    assert "stale" not in out and "\n\nMiddle.\n" in out and out.endswith("<!-- /results -->\nEnd.\n")
    assert dict(find_blocks(out)) == {"demo": "\n" + render_block("demo", DEMO) + "\n",
                                      "quality-demo": "\n" + render_block("q", QUALITY) + "\n"}
    assert render_readme(out, folder) == out
    assert render_readme("no blocks here\n", folder) == "no blocks here\n"


def test_render_readme_names_a_missing_results_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'absent'.*absent\.json"):
        render_readme("<!-- results: absent -->\n<!-- /results -->\n", results_dir(tmp_path))


def test_unclosed_block_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no matching"):
        render_readme("<!-- results: demo -->\nno end\n", results_dir(tmp_path))


def test_check_detects_one_edited_number(tmp_path, capsys):
    folder, readme = results_dir(tmp_path), tmp_path / "README.md"
    readme.write_text(README)
    args = ["--readme", str(readme), "--results-dir", str(folder)]
    assert main([*args, "--check"]) == 1
    assert main([*args, "--write"]) == 0
    capsys.readouterr()
    assert main([*args, "--check"]) == 0
    assert "README results are up to date" in capsys.readouterr().out
    readme.write_text(readme.read_text().replace("| 12.78 |", "| 12.79 |"))
    assert main([*args, "--check"]) == 1
    report = capsys.readouterr().out
    assert "'demo'" in report and "-| student | 12.79 | 25.87 |" in report and "'quality-demo'" not in report


def test_readme_results_match_their_json():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert find_blocks(text), "README.md has lost its <!-- results: ... --> blocks"
    assert render_readme(text, ROOT / "docs/results") == text, (
        "README results blocks differ from docs/results/*.json; run `python -m tagi.eval.results --write`")


def test_a_value_in_prose_is_generated_and_checked(tmp_path, capsys):
    """A number in the README's prose could drift from its JSON: one written as a value is regenerated and checked."""
    folder, readme = results_dir(tmp_path), tmp_path / "README.md"
    readme.write_text("The student scores <!-- value: demo rows/student/exact_match .2f -->12.70<!-- /value --> EM.\n")
    args = ["--readme", str(readme), "--results-dir", str(folder)]
    assert main([*args, "--check"]) == 1
    assert "README value demo rows/student/exact_match: '12.70' in" in capsys.readouterr().out
    assert main([*args, "--write"]) == 0 and main([*args, "--check"]) == 0
    assert "scores <!-- value: demo rows/student/exact_match .2f -->12.78<!-- /value --> EM." in readme.read_text()
    readme.write_text("<!-- value: demo rows/nobody/exact_match .2f -->1<!-- /value -->\n")
    assert main([*args, "--check"]) == 2
    assert "README value demo rows/nobody/exact_match: " in capsys.readouterr().err


PROSE = """# Title
Weight decay 0.01 and a 3 % warm-up; the student scored 25.87 ROUGE-L.
## Results
It took 12 s and 1.5 GiB; TAGI gets 13.50 EM, 0.31× the FLOPs, and 40 % more.
Targets: ≤ 0.35× FLOPs, < 10 %; a 95% interval; `--timeout 30 s` is code; 200 examples, lr 1e-3, 8 steps.
<!-- results: demo -->
| student | 12.78 |
<!-- /results -->
Student: <!-- value: demo rows/student/exact_match .2f -->12.78<!-- /value --> EM.
```bash
python x.py   # 3.5 s
```
## Later
A 2.0 GB download.
"""


def test_typed_measurements_are_found_by_shape_and_by_their_json(tmp_path):
    """The README's prose was not checked: a measured number typed in it could drift from docs/results."""
    found = untraced_numbers(PROSE, results_dir(tmp_path))
    assert [line.split(": ")[0] + ": " + line.split(": ")[1] for line in found] == [
        "line 2: 25.87",  # outside Results, but a copy of demo.json's student ROUGE-L
        "line 4: 12 s", "line 4: 1.5 GiB", "line 4: 13.50", "line 4: 0.31×", "line 4: 40 %"]


def test_the_readme_types_no_measured_number():
    assert untraced_numbers((ROOT / "README.md").read_text(encoding="utf-8"), ROOT / "docs/results") == [], (
        "write these as <!-- value: FILE PATH FORMAT -->…<!-- /value --> (python -m tagi.eval.results --write)")


def test_git_commit_is_dirty_for_code_changes_not_for_written_results(tmp_path):
    import subprocess

    from tagi.eval.results import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "docs/results").mkdir(parents=True)
    (tmp_path / "docs/results/x.json").write_text("{}")
    (tmp_path / "code.py").write_text("a = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    sha = git_commit(tmp_path)
    (tmp_path / "docs/results/x.json").write_text('{"b": 2}')  # a benchmark's output
    assert git_commit(tmp_path) == sha and len(sha) == 40
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path) == sha + "-dirty"


def test_a_footer_keeps_the_mark_of_a_run_made_with_uncommitted_changes():
    from tagi.eval.results import short_commit

    assert short_commit("c2799e37b9167c4786a75f6a78d76f2ebe2f0122-dirty") == "c2799e37b9-dirty"
    assert short_commit("c2799e37b9167c4786a75f6a78d76f2ebe2f0122") == "c2799e37b9"
