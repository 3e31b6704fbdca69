"""`python -m tagi fit` on the demo configs, a few steps per stage, asserting the artifacts written."""

import csv
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel

from helpers import FAST, ROOT, TINY, chdir_scratch, config, fit, stages_in
from tagi.__main__ import main as tagi_main
from tagi.training.cli import run_cli
from tagi.eval.reports import read_predictions
from tagi.data.tokenization import load_tokenizer
from tagi.modeling.backbone import load_backbone
from tagi.pipeline import main as pipeline_main
from tagi.inference.student import Student
from transformers import AutoTokenizer, T5ForConditionalGeneration

pytestmark = pytest.mark.e2e  # whole stages through the CLI; `-m "not e2e"` skips them



def test_help_lists_every_command_without_importing_torch():
    code = ("import sys\nfrom tagi.__main__ import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nassert 'torch' not in sys.modules and 'lightning' not in sys.modules\n")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: tagi <command>")
    for command in ("fit", "validate", "test", "predict", "pipeline", "adapter", "fetch"):
        assert f"\n  {command} " in shown.stdout, command


def test_an_unknown_command_names_every_command_and_the_closest(capsys):
    """jsonargparse's own message lists only fit/validate/test/predict: pipeline, adapter and fetch are routed before it."""
    for typo, hint in (("fitt", "did you mean 'fit'?"), ("adaptr", "did you mean 'adapter'?"), ("fecth", "did you mean 'fetch'?"),
                       ("train", "")):
        with pytest.raises(SystemExit) as exit_info:
            tagi_main([typo, "--config", "x.yaml"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"unknown command {typo!r}" in err and hint in err
        assert "fit, validate, test, predict, pipeline, adapter, fetch" in err


def test_a_parse_error_is_short_and_names_the_option(capsys):
    """Not jsonargparse's full usage (every Trainer option, ~150 lines) above the line that matters."""
    with pytest.raises(SystemExit) as exit_info:
        tagi_main(["test", "--config", config("finetune"), "--model.init_args.lora_rnak=8"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Option 'lora_rnak' is not accepted" in err
    assert err.startswith("usage: tagi test --config FILE") and len(err.splitlines()) < 15


def test_progress_bar_counts_optimizer_steps(tmp_path, monkeypatch):
    """A run set by max_steps reads "step N/max_steps", not Lightning's "Epoch 6/-2"."""
    from tagi.training.callbacks import StepProgressBar

    monkeypatch.chdir(tmp_path)
    cli = run_cli(["--config", str(ROOT / "configs/demo/teacher.yaml"), TINY, "--trainer.max_steps=7"], run=False)
    bars = [c for c in cli.trainer.callbacks if isinstance(c, StepProgressBar)]
    assert len(bars) == 1
    bars[0]._trainer = cli.trainer  # what Lightning sets when fitting starts
    assert bars[0]._get_train_description(3).strip() == "step 0/7"
    quiet = run_cli(["--config", str(ROOT / "configs/demo/teacher.yaml"), TINY, "--trainer.enable_progress_bar=false"], run=False)
    assert not any(isinstance(c, StepProgressBar) for c in quiet.trainer.callbacks)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    yield from chdir_scratch(tmp_path_factory, "cli")


@pytest.fixture(scope="module")
def stages(workdir, trained_stages):
    return stages_in(trained_stages, workdir)


@pytest.fixture(scope="module")
def teachers(stages):
    return stages["teachers"]


def test_teacher_stage_writes_one_peft_adapter_per_cluster(workdir, teachers):
    clusters = sorted(path.name for path in teachers.iterdir())
    assert clusters == ["case", "counting", "deletion", "filtering", "selection", "spelling", "word-order"]  # Acronyms, Composition: no train task
    for cluster in clusters:
        assert sorted(path.name for path in (teachers / cluster).iterdir()) == [
            "adapter_config.json", "adapter_model.safetensors", "meta.json"
        ]
    meta = json.loads((teachers / "case/meta.json").read_text())
    assert meta["cluster"] == "Case" and meta["lora_rank"] == 8 and meta["tasks"]
    backbone = load_backbone("tiny", {"d_model": 32, "num_layers": 2, "num_heads": 2, "vocab_size": len(load_tokenizer("synthetic"))})
    PeftModel.from_pretrained(backbone, str(teachers / "case"))  # loads as a standard adapter
    run = workdir / "checkpoints/demo/teacher"
    assert {"config.yaml", "metrics.csv", "complete.json", "checkpoints"} <= {path.name for path in run.iterdir()}
    # max_steps (4) is per cluster: every teacher took its 4 steps, one cluster after another
    assert json.loads((run / "complete.json").read_text())["global_step"] == 4 * len(clusters) and meta["steps"] == 4


@pytest.fixture(scope="module")
def pretrain(stages):
    """The shared stage-2 checkpoint (trained on a small corpus of its own): what the finetune tests warm-start from."""
    return stages["pretrain"]


def test_pretrain_stage_writes_checkpoint_and_config(workdir, pretrain):
    run = workdir / "checkpoints/demo/pretrain"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "tagi.training.PretrainModule"
    assert pretrain.is_file() and pretrain.parent == run / "checkpoints"
    assert json.loads((run / "complete.json").read_text())["global_step"] == 4


def test_finetune_stage_warm_starts_and_uses_teachers(workdir, teachers, pretrain):
    cli = fit("finetune", f"--model.init_args.init_from={pretrain}", f"--model.init_args.teachers={teachers}")
    logged = cli.trainer.callback_metrics
    assert {"train/ce", "train/kl", "train/param", "train/loss"} <= set(logged)
    assert float(logged["train/kl"]) > 0 and float(logged["train/param"]) > 0
    assert "val/rougeL" in logged
    assert (workdir / "checkpoints/demo/finetune/checkpoints/last.ckpt").is_file()
    # step 0: each term's share of the gradient at the generated LoRA, logged once (not repeated later)
    rows = [row for row in csv.DictReader((workdir / "checkpoints/demo/finetune/metrics.csv").open())
            if row.get("train/grad_share/ce")]
    assert [row["step"] for row in rows] == ["0"]
    shares = [float(rows[0][f"train/grad_share/{term}"]) for term in ("ce", "kl", "param")]
    assert all(share > 0 for share in shares) and abs(sum(shares) - 1) < 1e-5


def test_print_config_and_misspelt_key(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(ROOT / "configs/demo/finetune.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["distillation"]["param_form"] == "delta"
    assert printed["model"]["init_args"]["architecture"]["lora_rank"] == 8  # read from parts/architecture.yaml
    assert printed["data"]["init_args"]["tokenizer"] == "synthetic"  # set once; linked into the model

    bad = shutil.copytree(ROOT / "configs/demo", workdir / "bad-configs")  # parts/ resolve beside it
    architecture = yaml.safe_load((bad / "parts/architecture.yaml").read_text())
    (bad / "parts/architecture.yaml").write_text(yaml.safe_dump({**architecture, "lora_rnk": 4}))
    result = subprocess.run([sys.executable, "-m", "tagi", "fit", "--config", str(bad / "finetune.yaml")],
                            capture_output=True, text=True, cwd=workdir)
    assert result.returncode != 0
    assert "lora_rnk" in result.stderr and "Traceback" not in result.stderr


def test_theta0_stage_writes_a_from_pretrained_folder(workdir):
    fit("theta0", "--model.init_args.output_dir=theta0")
    theta0 = T5ForConditionalGeneration.from_pretrained(workdir / "theta0")
    assert theta0.config.d_model == 32 and theta0.config.vocab_size == len(load_tokenizer("synthetic"))
    meta = json.loads((workdir / "theta0/tagi_backbone.json").read_text())
    assert meta["stage"] == "theta0" and meta["input"] == "concat" and meta["global_step"] == 4
    assert json.loads((workdir / "checkpoints/demo/theta0/complete.json").read_text())["global_step"] == 4


def test_pipeline_runs_every_stage_skips_finished_ones_and_resumes_a_killed_one(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    overrides = [TINY, *FAST]
    config = str(ROOT / "configs/demo/pipeline.yaml")
    summary = pipeline_main(["--config", config, "--run=t", f"--overrides={json.dumps(overrides)}"])
    assert set(summary["stages"]) == {"theta0", "teacher", "pretrain", "finetune"}
    assert list(summary["scores"]) == ["student (TAGI)", "student, paraphrased instruction", "student, another task's instruction",
                                       "student, empty instruction", "student, random instruction",
                                       "backbone + exported adapter only", "θ0, instruction concatenated (stage 0)"]
    controls = ["test-paraphrase", "test-other_task", "test-empty", "test-random"]
    for folder in ("test", *controls, "test-adapter-only", "test-theta0"):
        assert {"results.json", "results.md", "predictions.jsonl"} <= {p.name for p in (tmp_path / "checkpoints/t" / folder).iterdir()}
    for control in controls:  # each control's results say which instructions the student was given
        assert json.loads((tmp_path / "checkpoints/t" / control / "results.json").read_text())["instruction_control"] == control[5:]
    assert "rougeL" in summary["scores"]["student (TAGI)"] and "exact_match/category/Case" in summary["scores"]["student (TAGI)"]
    assert not (tmp_path / "docs").exists()  # a tracked file the README is generated from: written only with --publish
    written = json.loads((tmp_path / "checkpoints/t/table.json").read_text())  # the run's own table
    assert written["split"] == "test" and written["metric"] == "exact_match" and len(written["commit"]) >= 7
    assert written["rows"] == {name: {"exact_match": round(s["exact_match"], 2), "rougeL": round(s["rougeL"], 2)}
                               for name, s in summary["scores"].items()}
    assert (tmp_path / "checkpoints/t/theta0/model/config.json").is_file() and (tmp_path / "teachers/t/case").is_dir()
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "checkpoints/t/theta0/model"))  # plain transformers, θ0's vocabulary
    assert saved("cow ape").input_ids == load_tokenizer("synthetic")("cow ape").input_ids
    teacher = json.loads((tmp_path / "teachers/t/case/meta.json").read_text())
    assert teacher["backbone"]["name"] == "checkpoints/t/theta0/model"  # every stage adapted the stage-0 backbone
    assert json.loads((tmp_path / "checkpoints/t/pipeline.json").read_text())["scores"] == summary["scores"]

    again = pipeline_main(["--config", config, "--run=t", f"--overrides={json.dumps(overrides)}", "--publish=true"])
    assert json.loads((tmp_path / "docs/results/demo.json").read_text())["rows"] == written["rows"]  # asked for
    clusters = len([folder for folder in (tmp_path / "teachers/t").iterdir() if folder.is_dir()])
    steps = {name: 4 * (clusters if name == "teacher" else 1) for name in summary["stages"]}  # the teachers: 4 per category
    assert {name: stage["global_step"] for name, stage in again["stages"].items()} == steps
    assert all(stage["skipped"] for stage in again["stages"].values())  # nothing re-ran
    assert [again["stages"][name]["seconds"] for name in again["stages"]] == [summary["stages"][name]["seconds"]
                                                                            for name in summary["stages"]]  # kept
    fewer = pipeline_main(["--config", config, "--run=t", f"--overrides={json.dumps(overrides)}", "--controls=[]",
                           "--adapter_check=false"])  # a rerun with the checks off keeps the earlier rows
    assert fewer["scores"].keys() == summary["scores"].keys()
    assert json.loads((tmp_path / "checkpoints/t/pipeline.json").read_text())["scores"].keys() == summary["scores"].keys()
    # The finished stages were trained from backbone seed 0: the advice was the saved config.yaml, which a pipeline
    # cannot take; its fix is --force=true (θ0's test is the first consumer to notice, here)
    with pytest.raises(SystemExit) as exit_info:
        tagi_main(["pipeline", "--config", config, "--run=t", "--controls=[]", "--adapter_check=false",
                   f"--overrides={json.dumps([*overrides, '--model.init_args.backbone.seed=3'])}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "'seed': 0}, but this run uses" in err and "config.yaml" not in err
    assert "were trained with other settings (configs, overrides) than this command's: rerun it with --force=true" in err
    marker = tmp_path / "checkpoints/t/finetune/complete.json"
    finished = marker.read_text()  # a marker naming a checkpoint that is gone was reported as a bad --ckpt_path
    marker.write_text(json.dumps({**json.loads(finished), "last_checkpoint": "checkpoints/t/finetune/checkpoints/gone.ckpt"}))
    with pytest.raises(SystemExit) as exit_info:
        tagi_main(["pipeline", "--config", config, "--run=t", f"--overrides={json.dumps(overrides)}"])
    assert exit_info.value.code == 2 and ("finetune/complete.json: its last_checkpoint checkpoints/t/finetune/checkpoints/"
                                          "gone.ckpt is not there") in capsys.readouterr().err
    marker.write_text(finished)
    recorded = (tmp_path / "checkpoints/t/pipeline.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:  # a rerun that scores nothing replaced every row with {}
        tagi_main(["pipeline", "--config", config, "--run=t",
                   f"--overrides={json.dumps([*overrides, '--data.init_args.max_test_instances_per_task=0'])}"])
    assert exit_info.value.code == 2 and "max_test_instances_per_task: 0" in capsys.readouterr().err
    assert (tmp_path / "checkpoints/t/pipeline.json").read_bytes() == recorded

    (tmp_path / "checkpoints/t/finetune/complete.json").write_text('{"global_step": 4, "last_ch')  # cut off
    with pytest.raises(SystemExit) as exit_info:
        tagi_main(["pipeline", "--config", config, "--run=t", f"--overrides={json.dumps(overrides)}"])
    assert exit_info.value.code == 2
    assert "finetune/complete.json: not the completion marker a stage writes" in capsys.readouterr().err
    (tmp_path / "checkpoints/t/finetune/complete.json").unlink()  # as if killed after its last checkpoint
    with caplog.at_level(logging.INFO, logger="tagi.pipeline"):
        resumed = pipeline_main(["--config", config, "--run=t", f"--overrides={json.dumps(overrides)}"])
    assert "finetune: resuming from checkpoints/t/finetune/checkpoints/last.ckpt" in caplog.text
    assert resumed["stages"]["finetune"]["global_step"] == 4 and "seconds" in resumed["stages"]["finetune"]


@pytest.fixture(scope="module")
def student_checkpoint(workdir, teachers, pretrain):
    links = [f"--model.init_args.init_from={pretrain}", f"--model.init_args.teachers={teachers}"]
    checkpoint = workdir / "checkpoints/demo/finetune/checkpoints/last.ckpt"
    if not checkpoint.is_file():
        fit("finetune", *links)
    return checkpoint, links


def test_validation_metrics_read_only_validation_tasks(workdir, student_checkpoint):
    """Every stage after stage 1 validates on the validation tasks: no test task reaches a val metric."""
    from tagi.data.sni import task_names

    suite = next((workdir / "runs/data").glob("synthetic-v*-seed0"))
    val, test = set(task_names(suite, subset="val")), set(task_names(suite, subset="test"))
    for stage in ("finetune", "pretrain"):
        header = (workdir / f"checkpoints/demo/{stage}/metrics.csv").read_text().splitlines()[0].split(",")
        logged = {key.removeprefix("val/count/task/") for key in header if key.startswith("val/count/task/")}
        assert logged and logged <= val and not logged & test, stage  # (FAST validates on one batch only)


def test_test_writes_results_and_streams_predictions(workdir, student_checkpoint):
    checkpoint, links = student_checkpoint
    out = "--trainer.logger.init_args.name=report"
    run_cli(["test", "--config", str(ROOT / "configs/demo/finetune.yaml"), TINY, *FAST, *links, out, f"--ckpt_path={checkpoint}"])
    folder = workdir / "checkpoints/demo/report"
    results = json.loads((folder / "results.json").read_text())
    assert results["checkpoint"] == str(checkpoint) and results["model"] == "FinetuneModule"
    assert len(results["tasks"]) == 10 and results["overall"]["count"] == 10 * 2  # 2 test instances per held-out task
    for category, scores in results["categories"].items():
        members = [task for task in results["tasks"].values() if task["category"] == category]
        assert scores["count"] == sum(task["count"] for task in members)
        assert scores["rougeL"] == pytest.approx(sum(t["rougeL"] * t["count"] for t in members) / scores["count"], abs=1e-4)
    assert results["task_cache"]["hypernetwork_runs"] == 10  # once per test task
    assert "| overall | all | 20 |" in (folder / "results.md").read_text()
    cost = results["inference_cost"]
    assert cost["tasks"] == 10 and cost["examples"] == 20 and cost["tagi_instruction"]["flops"] > 0
    assert cost["tagi"]["flops"] == cost["tagi_instruction"]["flops"] + cost["tagi_inputs"]["flops"]
    assert cost["tagi_inputs"]["flops"] < cost["baseline"]["flops"]  # per input, cheaper than re-reading the instruction
    assert cost["ratio_tagi_over_baseline"]["flops"] == pytest.approx(cost["tagi"]["flops"] / cost["baseline"]["flops"])
    assert "ratio TAGI / concatenation" in (folder / "results.md").read_text()
    predictions = read_predictions(folder / "predictions.jsonl")
    assert len(predictions) == 20 and set(predictions[0]) == {"task", "id", "input", "prediction", "references"}
    assert {row["task"] for row in predictions} == set(results["tasks"])

    run_cli(["predict", "--config", str(ROOT / "configs/demo/finetune.yaml"), TINY, *FAST, *links,
             "--trainer.logger.init_args.name=predict", f"--ckpt_path={checkpoint}"])
    predicted = read_predictions(workdir / "checkpoints/demo/predict/predictions.jsonl")
    assert [row["prediction"] for row in predicted] == [row["prediction"] for row in predictions]  # same model, greedy


def test_evaluating_never_touches_the_training_run(workdir, student_checkpoint, capsys):
    """The README's `test` and `predict` commands name the training run's logger folder: they write into
    <run>/test and <run>/predict, and the run's log, config and marker stay as training left them."""
    checkpoint, links = student_checkpoint
    run = workdir / "checkpoints/demo/finetune"
    kept = ("metrics.csv", "config.yaml", "complete.json")
    before = {name: (run / name).read_bytes() for name in kept}
    command = ["--config", str(ROOT / "configs/demo/finetune.yaml"), TINY, *FAST, *links]
    run_cli(["test", *command, f"--ckpt_path={checkpoint}"])
    run_cli(["predict", *command, "--ckpt_path=last"])  # resolved to the training run's last.ckpt
    assert {name: (run / name).read_bytes() for name in kept} == before
    results = json.loads((run / "test/results.json").read_text())
    assert results["checkpoint"] == str(checkpoint) and results["global_step"] == 4
    assert len(read_predictions(run / "predict/predictions.jsonl")) == 20

    tree = sorted(str(path) for path in workdir.rglob("*"))
    for bad, message in [
        ([], "--ckpt_path: `test` needs the checkpoint to evaluate"),  # would score an untrained hypernetwork
        (["--ckpt_path=last", "--trainer.logger.init_args.name=elsewhere"],
         "--ckpt_path last: there is no checkpoints/demo/elsewhere/checkpoints/last.ckpt"),
        (["--ckpt_path=best"], "--ckpt_path best: `test` resolves only `last`"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            tagi_main(["test", *command, *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert sorted(str(path) for path in workdir.rglob("*")) == tree  # nothing written


def test_last_checkpoint_is_the_final_step(workdir, tmp_path):
    """max_steps not a multiple of the save interval: last.ckpt (and the marker's checkpoint) hold the last step."""
    every5 = tmp_path / "every5.yaml"
    every5.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                      "      init_args: {save_last: true, every_n_train_steps: 5}\n")
    run_cli(["fit", "--config", str(ROOT / "configs/demo/teacher.yaml"), "--config", str(every5), TINY, *FAST,
             "--trainer.max_steps=7", "--trainer.logger.init_args.name=seven", "--model.init_args.output_dir=teachers/seven",
             '--data.init_args.only_clusters=["Case"]'])  # one cluster: max_steps is per cluster
    done = json.loads((workdir / "checkpoints/demo/seven/complete.json").read_text())
    assert done["global_step"] == 7 and Path(done["last_checkpoint"]).name == "last.ckpt"
    assert torch.load(done["last_checkpoint"], map_location="cpu", weights_only=False)["global_step"] == 7
    assert (workdir / "checkpoints/demo/seven/checkpoints/epoch=0-step=5.ckpt").is_file()  # the periodic save is kept


def test_a_run_folder_has_one_writer_and_a_finished_run_is_kept(workdir, capsys):
    folder, out = workdir / "checkpoints/demo/owned", workdir / "teachers/owned"
    command = ["fit", "--config", str(ROOT / "configs/demo/teacher.yaml"), TINY, *FAST, "--trainer.max_steps=2",
               "--trainer.logger.init_args.name=owned", "--model.init_args.output_dir=teachers/owned"]
    lock = folder.parent / ".owned.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f"{socket.gethostname()}:{os.getpid()} 2026-12-02 00:00:00\n")  # a live writer
    with pytest.raises(SystemExit) as exit_info:
        tagi_main(command)
    assert exit_info.value.code == 2 and "another run is writing into it" in capsys.readouterr().err
    assert not folder.exists() and not out.exists()

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    lock.write_text(f"{socket.gethostname()}:{gone} 2026-12-02 00:00:00\n")  # a killed run's lock
    tagi_main(command)
    assert not lock.exists() and (folder / "complete.json").is_file()

    finished = {path: path.read_bytes() for path in sorted(folder.rglob("*")) + sorted(out.rglob("*")) if path.is_file()}
    for bad, message in [
        ([], "owned holds a finished run (complete.json)"),  # a quick trial over a trained stage
        (["--trainer.logger.init_args.name=trial"], "model.init_args.output_dir: teachers/owned already holds"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            tagi_main([*command, *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert {path: path.read_bytes() for path in finished} == finished and not (workdir / "checkpoints/demo/trial").exists()
    tagi_main([*command, "--overwrite=true"])  # asked for
    assert "overwrite: false" in (folder / "config.yaml").read_text()  # not carried into the next run's config


def test_adapter_subcommand_writes_a_peft_adapter(workdir, student_checkpoint, capsys):
    checkpoint, _ = student_checkpoint
    (workdir / "definition.txt").write_text("Given a list of words, sort the words alphabetically.\n")
    (workdir / "pos.jsonl").write_text('{"input": "cow ape", "output": "ape cow"}\n')
    tagi_main(["adapter", "--ckpt", str(checkpoint), "--instruction", "@definition.txt", "--positive-examples", "pos.jsonl",
               "--out", "adapters/sort"])
    meta = json.loads((workdir / "adapters/sort/meta.json").read_text())
    assert meta["instruction"].startswith("Definition: Given a list of words, sort") and "Output: ape cow" in meta["instruction"]
    base = json.loads((workdir / "adapters/sort/adapter_config.json").read_text())["base_model_name_or_path"]
    assert not Path(base).is_absolute() and f"its base_model_name_or_path: {base}" in capsys.readouterr().out
    PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(workdir / "adapters/sort" / base), str(workdir / "adapters/sort"))

    # The README's loading snippet, as written, in a fresh process without tagi: it gives the adapter-only student's output
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("<!-- snippet: peft-load -->\n```python\n")[1].split("```")[0]
    shown = subprocess.run([sys.executable, "-c", "import sys; sys.modules['tagi'] = None\n" + snippet],
                           capture_output=True, text=True, cwd=workdir)
    assert shown.returncode == 0, shown.stderr[-2000:]
    student = Student.from_checkpoint(checkpoint)
    expected = student.generate(meta["instruction"], ["cow ape"], max_new_tokens=16, lora_only=True)
    assert shown.stdout.strip() == repr(expected)

    (workdir / "latin1.txt").write_bytes("Trier les mots, café.".encode("latin-1"))
    (workdir / "empty.jsonl").write_text("\n")
    teacher = {path: path.read_bytes() for path in (workdir / "teachers/t/case").iterdir()}
    for bad, message in [
        (["--ckpt", "missing.ckpt", "--instruction", "x", "--out", "a"], "--ckpt missing.ckpt: no such checkpoint file"),
        (["--ckpt", str(checkpoint), "--instruction", "@nope.txt", "--out", "a"], "--instruction @nope.txt: nope.txt does not exist"),
        (["--ckpt", str(checkpoint), "--instruction", "@adapters", "--out", "a"], "--instruction @adapters: adapters is not a file"),
        (["--ckpt", str(workdir / "checkpoints/demo/teacher/checkpoints/last.ckpt"), "--instruction", "x", "--out", "a"],
         "written by the 'teacher' stage, and a checkpoint of the 'pretrain' or 'finetune' stage is needed"),
        (["--ckpt", str(checkpoint), "--instruction", "x", "--out", "pos.jsonl"], "--out pos.jsonl: a file is there"),
        (["--ckpt", str(checkpoint), "--instruction", "  ", "--out", "a"], "the instruction is empty"),
        (["--ckpt", str(checkpoint), "--instruction", "@latin1.txt", "--out", "a"], "latin1.txt is not UTF-8 text"),
        (["--ckpt", str(checkpoint.parent), "--instruction", "x", "--out", "a"], "checkpoints: a folder; give the checkpoint file"),
        (["--ckpt", str(checkpoint), "--instruction", "x", "--positive-examples", "empty.jsonl", "--out", "a"],
         "empty.jsonl holds no examples"),
        (["--ckpt", str(checkpoint), "--instruction", "x", "--positive-examples", "adapters", "--out", "a"],
         "--positive-examples: adapters is not a regular file"),
        (["--ckpt", str(checkpoint), "--instruction", "x", "--out", ""], "--out is empty"),
        (["--ckpt", str(checkpoint), "--instruction", "x", "--out", "teachers/t/case"],
         "teachers/t/case: the folder holds an adapter this command did not write"),  # same file names as an export
    ]:
        with pytest.raises(SystemExit) as exit_info:
            tagi_main(["adapter", *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (workdir / "a").exists()  # nothing written on error
    assert {path: path.read_bytes() for path in (workdir / "teachers/t/case").iterdir()} == teacher
    assert (workdir / "pos.jsonl").read_text() == '{"input": "cow ape", "output": "ape cow"}\n'


def test_an_adapter_that_cannot_be_written_is_one_error_and_the_earlier_export_stays(workdir, student_checkpoint):
    """`--out` on a folder that refuses writes (/proc here, a read-only disk alike) or a disk that fills up halfway
    (RLIMIT_FSIZE: a write past 4 kB fails with EFBIG): a traceback naming a `.tmp-*` folder, or nothing."""
    import resource

    checkpoint, _ = student_checkpoint
    adapter = ["adapter", "--ckpt", str(checkpoint), "--instruction", "Sort the words.", "--out"]
    tagi_main([*adapter, "adapters/earlier"])
    earlier = {path.name: path.read_bytes() for path in (workdir / "adapters/earlier").iterdir() if path.is_file()}

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    for out, limit, message in [("/proc/tagi/adapter", None, "error: --out /proc/tagi/adapter: cannot be written ("),
                                ("adapters/earlier", small_files, "error: --out adapters/earlier: cannot be written (File too "
                                 "large); the file is larger than this process may write (ulimit -f) or the filesystem "
                                 "allows; what was there before is unchanged")]:
        run = subprocess.run([sys.executable, "-m", "tagi", *adapter, out], capture_output=True, text=True, cwd=workdir,
                             preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith(message), run.stderr[-3000:]
    assert {path.name: path.read_bytes() for path in (workdir / "adapters/earlier").iterdir() if path.is_file()} == earlier
    assert not list((workdir / "adapters").glob(".*"))  # no staging folder left beside it
