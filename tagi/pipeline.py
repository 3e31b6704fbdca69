"""`python -m tagi pipeline --config configs/<setting>/pipeline.yaml`: [theta0 →] teacher → pretrain → finetune → test.

Each stage is the same `fit` a user would run by hand, with the previous stages' artifacts passed
in as overrides; a stage whose run folder holds a completion marker is skipped, and one that was
killed mid-run (checkpoints/last.ckpt, no marker) resumes from its last checkpoint. At the end the
student is tested on the test tasks with their real instructions and with each instruction
control (paraphrased, another task's, empty, random: what reading the instruction is worth), as
backbone + exported adapter only, and θ0 (stage 0) is tested with the instruction concatenated.
The table is printed and written to the run's folder, `<checkpoints_dir>/<run>/table.json`; with
`publish`, also to `results_json` (the README's demo table is generated from that tracked file, so only
`scripts/demo.sh` publishes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser, ActionConfigFile

from tagi.errors import InputError, Terminated
from tagi.eval.results import git_commit, render_block
from tagi.io import COMPLETE_NAME, atomic_write_text, is_zero_folder
from tagi.provenance import CheckpointError
from tagi.training.cli import run_cli
from tagi.training.preflight import check_config_arguments, read_config_file, yaml_strings

log = logging.getLogger(__name__)

STAGES = ("theta0", "teacher", "pretrain", "finetune")
THETA0 = Path("theta0") / "model"  # where stage 0 writes θ0 (from_pretrained), inside its run folder
CONTROL_ROWS = {"paraphrase": "student, paraphrased instruction", "other_task": "student, another task's instruction",
                "empty": "student, empty instruction", "random": "student, random instruction"}
TABLE = "table.json"  # the run's table, in its folder, in the form `tagi.eval.results` renders
HEADLINE = "exact_match"  # a model that copies its input cannot score it on the demo suite (ROUGE-L it can)
RECIPE = "recipe.json"  # beside a stage's run: the YAML files it was configured by (content digests) and its overrides
ROOT = Path(__file__).resolve().parents[1]  # a recipe names the repository's config files relative to it


def _run(args: list[str]):
    log.info("python -m tagi %s", " ".join(args))
    try:
        return run_cli(args)
    except Terminated as stopped:  # the pipeline stops there: no later stage runs on a stage that did not finish
        raise Terminated(stopped.stopped, "the pipeline stopped there; rerun the same `tagi pipeline` command: finished "
                         "stages are skipped and a stopped one resumes from its last checkpoint", stopped.exit_status) from None
    except CheckpointError as mismatch:  # its advice (the saved config.yaml, retrain the teachers) is a hand-run stage's
        raise CheckpointError(mismatch.problem, "The pipeline skips a finished stage without comparing its settings, so "
                              "this run's stages were trained with other settings (configs, overrides) than this "
                              "command's: rerun it with --force=true to retrain them, or give another --run") from None


def _complete(folder: Path) -> dict | None:
    marker = folder / COMPLETE_NAME
    if not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        done = None
    fix = "delete it, and the pipeline resumes the stage from its checkpoints/last.ckpt, or rerun with --force=true to train every stage again"
    if not isinstance(done, dict) or "last_checkpoint" not in done:
        raise InputError(f"{marker}: not the completion marker a stage writes (unreadable, or no last_checkpoint); {fix}")
    checkpoint = Path(str(done["last_checkpoint"]))
    if not (checkpoint.is_file() or is_zero_folder(checkpoint)):  # the next stage would name it, as its own --ckpt_path
        raise InputError(f"{marker}: its last_checkpoint {checkpoint} is not there (deleted or moved since); {fix}")
    return done


def _stage_folder(run_dir: Path, stage: str) -> list[str]:
    """Overrides that put a stage's logs, checkpoints and config under <run_dir>/<stage>/."""
    return [
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={run_dir}",
        f"--trainer.logger.name={stage}",
        "--trainer.logger.version=",
    ]


StageConfig = str | list[str]  # one YAML, or several applied in order (e.g. a shared trainer part first)


def _config_args(config: StageConfig) -> list[str]:
    return [arg for path in ([config] if isinstance(config, str) else config) for arg in ("--config", path)]


def recipe(configs: StageConfig, extra: list[str]) -> dict:
    """What a stage run is made of: its config files and every YAML file they name (parts/*.yaml), by
    content digest, and the command-line overrides. Whoever reuses the run (`benchmarks/quality.py`,
    θ0 shared with the pipeline's) compares it with the recipe it wants."""
    files, pending = {}, [Path(config) for config in ([configs] if isinstance(configs, str) else configs)]
    while pending:
        path = pending.pop()
        if path in files or not path.is_file():
            continue
        files[path] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        pending += [path.parent / value for value in yaml_strings(read_config_file(path)) if value.endswith(".yaml")]
    return {"configs": {_shown(path): digest for path, digest in files.items()}, "args": list(extra)}


def _shown(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def fit_stage(stage: str, config: StageConfig, run_dir: Path, extra: list[str], force: bool) -> dict:
    folder = run_dir / stage
    done = None if force else _complete(folder)
    if done:
        log.info("%s: finished artifacts in %s, skipping", stage, folder)
        return {**done, "skipped": True}
    start = time.perf_counter()
    # A stage killed mid-run left checkpoints but no marker: resume it instead of starting over.
    resume = ["--ckpt_path=last"] if (folder / "checkpoints" / "last.ckpt").is_file() and not force else []
    if resume:
        log.info("%s: resuming from %s", stage, folder / "checkpoints" / "last.ckpt")
    else:
        log.info("%s: training in %s", stage, folder)
    _run(["fit", *_config_args(config), *_stage_folder(run_dir, stage), *extra, *resume, f"--overwrite={force}"])
    done = _complete(folder)
    if done is None:
        raise RuntimeError(f"{stage}: the run ended without writing {folder / COMPLETE_NAME}; see the log above")
    if _first_process():
        atomic_write_text(folder / RECIPE, json.dumps(recipe(config, extra), indent=1, sort_keys=True) + "\n")
    done["seconds"] = round(time.perf_counter() - start, 1)  # this run's part, if it resumed a killed one
    return done


def score_checkpoint(config: StageConfig, run_dir: Path, checkpoint: str | None, extra: list[str],
                     folder: str = "test") -> dict[str, float]:
    """Test-task scores of `checkpoint` (None: a pretrained θ0 as it is, `preflight.scores_pretrained_backbone`);
    results.json, results.md, predictions.jsonl land in <run_dir>/<folder>/."""
    overrides = [*_stage_folder(run_dir, folder), *([f"--ckpt_path={checkpoint}"] if checkpoint else []), *extra]
    cli = _run(["test", *_config_args(config), *overrides])
    return {key.removeprefix("test/"): float(value) for key, value in cli.trainer.callback_metrics.items()}


def control_args(control: str) -> list[str]:
    return [] if control == "real" else [f"--data.init_args.instruction_control={control}"]


def run_pipeline(
    teacher: StageConfig,
    pretrain: StageConfig,
    finetune: StageConfig,
    run: str = "demo",
    teachers_dir: str = "teachers",
    checkpoints_dir: str = "checkpoints",
    controls: list[Literal["paraphrase", "other_task", "empty", "random"]] = list(CONTROL_ROWS),
    adapter_check: bool = True,
    results_json: str | None = None,
    publish: bool = False,
    force: bool = False,
    theta0: StageConfig | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Run the stages and the tests on the test tasks; return (and print) the scores.

    `theta0`: the config of an optional stage 0 that trains θ0 in full and saves it to
    <checkpoints_dir>/<run>/theta0/model, which every later stage then loads (offline settings only:
    there is no pretrained T5 to download); θ0 is then tested too (instruction concatenated).
    `controls`: instruction controls the student is also tested with (`tagi.data.controls`).
    `overrides`: command-line arguments given to every stage, e.g. ["--trainer.max_steps=10"];
    the links between stages are applied after them.
    `publish`: also write the table to `results_json` (a tracked file the README is generated from).
    """
    check_inputs(run, {"theta0": theta0, "teacher": teacher, "pretrain": pretrain, "finetune": finetune})
    if publish and not results_json:
        raise InputError("publish: true writes the table to results_json, which is not set; give "
                         "--results_json=<file> (nothing was written)")
    start = time.perf_counter()
    run_dir, teacher_out = Path(checkpoints_dir) / run, Path(teachers_dir) / run
    stages, shared = {}, list(overrides or [])
    if theta0 is not None:
        model = run_dir / THETA0
        stages["theta0"] = fit_stage("theta0", theta0, run_dir, [*shared, f"--model.init_args.output_dir={model}"], force)
        theta0_args = list(shared)
        shared.append(f"--model.init_args.backbone.name={model}")
    stages["teacher"] = fit_stage("teacher", teacher, run_dir, [*shared, f"--model.init_args.output_dir={teacher_out}"], force)
    stages["pretrain"] = fit_stage("pretrain", pretrain, run_dir, shared, force)
    links = [*shared, f"--model.init_args.init_from={stages['pretrain']['last_checkpoint']}", f"--model.init_args.teachers={teacher_out}"]
    stages["finetune"] = fit_stage("finetune", finetune, run_dir, links, force)
    student = stages["finetune"]["last_checkpoint"]
    scores = {"student (TAGI)": score_checkpoint(finetune, run_dir, student, links)}
    for control in controls:
        scores[CONTROL_ROWS[control]] = score_checkpoint(finetune, run_dir, student, [*links, *control_args(control)], f"test-{control}")
    if adapter_check:
        scores["backbone + exported adapter only"] = score_checkpoint(finetune, run_dir, student, [*links, "--model.init_args.adapter_only=true"], "test-adapter-only")
    if theta0 is not None:
        scores["θ0, instruction concatenated (stage 0)"] = score_checkpoint(theta0, run_dir, stages["theta0"]["last_checkpoint"], theta0_args, "test-theta0")
    summary = dict(run=run, stages=stages, scores=scores, seconds=round(time.perf_counter() - start, 1))
    if not _first_process():
        return summary  # several processes (DDP, DeepSpeed) each run the pipeline; one writes and prints its table
    summary = _keep_earlier(run_dir / "pipeline.json", summary)
    atomic_write_text(run_dir / "pipeline.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    results = results_file(summary)
    write_table(results, run_dir / TABLE, results_json if publish else None)
    print(render_block(run, results) + "\n\n" + category_table(scores["student (TAGI)"]))
    return summary


def _first_process() -> bool:
    """Rank 0 of a multi-process run (Lightning's launcher starts the others with these set), or the only one."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def write_table(results: dict, table: Path, published: str | None) -> None:
    """The run's table in its own folder; into a tracked results file only when asked (`publish`): a demo
    run that rewrote docs/results/demo.json left the README's table stale and `tagi.eval.results --check` failing."""
    text = json.dumps(results, indent=2) + "\n"
    atomic_write_text(table, text)
    if published:
        atomic_write_text(published, text)
        log.info("published the table to %s; `python -m tagi.eval.results --write` regenerates the README from it", published)
    else:
        log.info("wrote the table to %s (--publish=true also writes it to results_json)", table)


def check_inputs(run: str, configs: dict[str, StageConfig | None]) -> None:
    """Before any stage trains: a run name that stays under the output folders, and every stage config there."""
    if not run or Path(run).is_absolute() or ".." in Path(run).parts:
        raise InputError(f"run: {run!r} is not a run name; the run's folders are <checkpoints_dir>/<run> and "
                         "<teachers_dir>/<run>, so give a relative name such as 'demo' (nothing was written)")
    for stage, config in configs.items():
        for path in [] if config is None else [config] if isinstance(config, str) else config:
            if not Path(path).is_file():
                raise InputError(f"{stage}: {path} is not a file; give the stage's config YAML (paths in a pipeline "
                                 "YAML are relative to it; nothing was written)")


def _keep_earlier(path: Path, summary: dict) -> dict:
    """A rerun keeps what the earlier run recorded and it did not redo: a skipped stage's training
    seconds, and, when no stage was retrained, the score rows it did not test this time."""
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    stages = {}
    for name, stage in summary["stages"].items():
        before = earlier.get("stages", {}).get(name, {})
        kept = {"seconds": before["seconds"]} if stage.get("skipped") and "seconds" in before else {}
        stages[name] = {**kept, **stage}
    retrained = not all(stage.get("skipped") for stage in summary["stages"].values())
    scores = summary["scores"] if retrained else {**earlier.get("scores", {}), **summary["scores"]}
    return {**summary, "stages": stages, "scores": scores}


def results_file(summary: dict) -> dict:
    """The pipeline's table in the form `tagi.eval.results` renders (and the README is generated from)."""
    return {"setting": summary["run"], "commit": git_commit(), "split": "test", "metric": HEADLINE,
            "seconds": summary["seconds"],
            "stage_seconds": {name: stage["seconds"] for name, stage in summary["stages"].items() if "seconds" in stage},
            "rows": {name: {"exact_match": round(s["exact_match"], 2), "rougeL": round(s["rougeL"], 2)}
                     for name, s in summary["scores"].items()}}


def category_table(student: dict[str, float]) -> str:
    categories = sorted({key.split("/", 2)[2] for key in student if key.startswith("rougeL/category/")})
    lines = ["| category (student, test tasks) | exact match | ROUGE-L |", "|---|---:|---:|"]
    for category in categories:
        lines.append(f"| {category} | {student[f'exact_match/category/{category}']:.2f} | {student[f'rougeL/category/{category}']:.2f} |")
    return "\n".join(lines)


def _relative_to(folder: Path, config: StageConfig) -> StageConfig:
    if isinstance(config, str):
        return config if Path(config).is_absolute() else str(folder / config)
    return [_relative_to(folder, path) for path in config]


def main(argv: list[str]) -> dict:
    parser = ArgumentParser(prog="python -m tagi pipeline", description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(run_pipeline)
    check_config_arguments(argv)
    options = parser.parse_args(argv).as_dict()
    configs = options.pop("config", None) or []
    options = {key: value for key, value in options.items() if not key.startswith("__")}
    if configs:  # stage configs named in a pipeline YAML are relative to that YAML's folder
        folder = Path(str(configs[-1])).parent
        for stage in STAGES:
            if options.get(stage):
                options[stage] = _relative_to(folder, options[stage])
    return run_pipeline(**options)
