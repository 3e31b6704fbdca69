"""`python -m tagi pipeline --config configs/<setting>/pipeline.yaml`: [backbone →] teacher → pretrain → finetune → test.

Each stage is the same `fit` a user would run by hand, with the previous stages' artifacts passed
in as overrides; a stage whose run folder holds a completion marker is skipped, and one that was
killed mid-run (checkpoints/last.ckpt, no marker) resumes from its last checkpoint. At the end the
held-out scores of the student are printed as a table, next to the same student evaluated with
its instructions blanked (what reading the instruction is worth).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from jsonargparse import ArgumentParser, ActionConfigFile

from tagi.stages.base import COMPLETE_NAME

log = logging.getLogger(__name__)

STAGES = ("backbone", "teacher", "pretrain", "finetune")
THETA0 = "theta0"  # where stage 0 writes the backbone, under the run's checkpoint folder


def _run(args: list[str]):
    from tagi.__main__ import run_cli  # late import: the CLI module imports this one

    log.info("python -m tagi %s", " ".join(args))
    return run_cli(args)


def _complete(folder: Path) -> dict | None:
    marker = folder / COMPLETE_NAME
    return json.loads(marker.read_text()) if marker.is_file() else None


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


def _fit(stage: str, config: StageConfig, run_dir: Path, extra: list[str], force: bool) -> dict:
    folder = run_dir / stage
    done = None if force else _complete(folder)
    if done:
        log.info("%s: finished artifacts in %s, skipping", stage, folder)
        return done
    start = time.perf_counter()
    # A stage killed mid-run left checkpoints but no marker: resume it instead of starting over.
    resume = ["--ckpt_path=last"] if (folder / "checkpoints" / "last.ckpt").is_file() and not force else []
    if resume:
        log.info("%s: resuming from %s", stage, folder / "checkpoints" / "last.ckpt")
    _run(["fit", *_config_args(config), *_stage_folder(run_dir, stage), *extra, *resume])
    done = _complete(folder)
    if done is None:
        raise RuntimeError(f"{stage}: the run ended without writing {folder / COMPLETE_NAME}; see the log above")
    done["seconds"] = round(time.perf_counter() - start, 1)
    return done


def _test(config: StageConfig, run_dir: Path, checkpoint: str, extra: list[str], folder: str = "test") -> dict[str, float]:
    """Held-out test of `checkpoint`; results.json, results.md, predictions.jsonl land in <run_dir>/<folder>/."""
    overrides = [*_stage_folder(run_dir, folder), f"--ckpt_path={checkpoint}", *extra]
    cli = _run(["test", *_config_args(config), *overrides])
    return {key.removeprefix("test/"): float(value) for key, value in cli.trainer.callback_metrics.items()}


def run_pipeline(
    teacher: StageConfig,
    pretrain: StageConfig,
    finetune: StageConfig,
    run: str = "demo",
    teachers_dir: str = "teachers",
    checkpoints_dir: str = "checkpoints",
    blank_check: bool = True,
    adapter_check: bool = True,
    force: bool = False,
    backbone: StageConfig | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Run the stages and the held-out test; return (and print) the scores.

    `backbone`: the config of an optional stage 0 that trains θ0 in full and saves it to
    <checkpoints_dir>/<run>/theta0, which every later stage then loads (offline settings only:
    there is no pretrained T5 to download).
    `overrides`: command-line arguments given to every stage, e.g. ["--trainer.max_steps=10"];
    the links between stages are applied after them.
    """
    start = time.perf_counter()
    run_dir, teacher_out = Path(checkpoints_dir) / run, Path(teachers_dir) / run
    stages, shared = {}, list(overrides or [])
    if backbone is not None:
        theta0 = run_dir / THETA0
        stages["backbone"] = _fit("backbone", backbone, run_dir, [*shared, f"--model.init_args.output_dir={theta0}"], force)
        shared.append(f"--model.init_args.backbone.name={theta0}")
    stages["teacher"] = _fit("teacher", teacher, run_dir, [*shared, f"--model.init_args.output_dir={teacher_out}"], force)
    stages["pretrain"] = _fit("pretrain", pretrain, run_dir, shared, force)
    links = [*shared, f"--model.init_args.init_from={stages['pretrain']['last_checkpoint']}", f"--model.init_args.teachers={teacher_out}"]
    stages["finetune"] = _fit("finetune", finetune, run_dir, links, force)
    student = stages["finetune"]["last_checkpoint"]
    scores = {"student": _test(finetune, run_dir, student, links)}
    if blank_check:
        scores["student, instruction blanked"] = _test(finetune, run_dir, student, [*links, "--model.init_args.blank_instructions=true"], "test-blanked")
    if adapter_check:
        scores["backbone + exported adapter only"] = _test(finetune, run_dir, student, [*links, "--model.init_args.adapter_only=true"], "test-adapter-only")
    summary = dict(run=run, stages=stages, scores=scores, seconds=round(time.perf_counter() - start, 1))
    (run_dir / "pipeline.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(summary_table(summary))
    return summary


def summary_table(summary: dict) -> str:
    lines = [f"## Held-out scores — run `{summary['run']}` ({summary['seconds']} s)", "", "| model | ROUGE-L | exact match |", "|---|---:|---:|"]
    for name, scores in summary["scores"].items():
        lines.append(f"| {name} | {scores.get('rougeL', float('nan')):.2f} | {scores.get('exact_match', float('nan')):.2f} |")
    categories = sorted({key.split("/", 2)[2] for key in summary["scores"]["student"] if key.startswith("rougeL/category/")})
    if categories:
        lines += ["", "| category (student) | ROUGE-L | exact match |", "|---|---:|---:|"]
        for category in categories:
            student = summary["scores"]["student"]
            lines.append(f"| {category} | {student[f'rougeL/category/{category}']:.2f} | {student[f'exact_match/category/{category}']:.2f} |")
    return "\n".join(lines)


def _relative_to(folder: Path, config: StageConfig) -> StageConfig:
    if isinstance(config, str):
        return config if Path(config).is_absolute() else str(folder / config)
    return [_relative_to(folder, path) for path in config]


def main(argv: list[str]) -> dict:
    parser = ArgumentParser(prog="python -m tagi pipeline", description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(run_pipeline)
    options = parser.parse_args(argv).as_dict()
    configs = options.pop("config", None) or []
    options = {key: value for key, value in options.items() if not key.startswith("__")}
    if configs:  # stage configs named in a pipeline YAML are relative to that YAML's folder
        folder = Path(str(configs[-1])).parent
        for stage in STAGES:
            if options.get(stage):
                options[stage] = _relative_to(folder, options[stage])
    return run_pipeline(**options)
