"""Held-out quality of TAGI, its baselines and ablations, trained and tested the same way.

    python benchmarks/quality.py --setting demo --seeds 0 1 2 [--variants tagi concat ...]

Needs the setting's pipeline to have run once (θ0, the stage-2 checkpoint and the teachers):
`python -m tagi pipeline --config configs/<setting>/pipeline.yaml`. Every variant is a config of
the framework (configs/<setting>/finetune.yaml or baselines/*.yaml, plus overrides), trained for
the same number of steps, then tested on the held-out tasks; finished runs are skipped on rerun.
Prints a Markdown table (mean ± std over seeds), writes it with the raw scores to
runs/quality/<setting>/quality.{md,json} and a bar plot quality.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagi.pipeline import THETA0, _fit, _test  # noqa: E402  (the pipeline's own stage runner)

# name → (config relative to configs/<setting>/, overrides, needs the pipeline's stage-2/teacher links)
NO_FUSION = ["--model.init_args.architecture.fusion=false", "--model.init_args.architecture.fid=false"]
VARIANTS: dict[str, tuple[str, list[str], bool]] = {
    "no-instruction": ("baselines/no-instruction.yaml", [], False),
    "concat": ("baselines/concat.yaml", [], False),
    "hint": ("baselines/hint.yaml", [], True),
    "tagi": ("finetune.yaml", [], True),
    "tagi-no-kl": ("finetune.yaml", ["--model.init_args.distillation.kl_weight=0"], True),
    "tagi-no-param": ("finetune.yaml", ["--model.init_args.distillation.param_weight=0"], True),
    "tagi-ab": ("finetune.yaml", ["--model.init_args.distillation.param_form=ab"], True),
    "tagi-hart": ("finetune.yaml", ["--model.init_args.distillation.consistency_weight=0.1"], True),
    "tagi-no-pretrain": ("finetune.yaml", ["--model.init_args.init_from=null"], True),
    # The instruction reaches the model only through the generated LoRA: no encoder fusion, no FiD.
    # It needs a stage-2 checkpoint of the same architecture, pretrained here (seed 0, same steps).
    "tagi-no-fusion": ("finetune.yaml", NO_FUSION, True),
}
OWN_PRETRAIN = {"tagi-no-fusion": ("pretrain.yaml", NO_FUSION)}
BASELINES = ["no-instruction", "concat", "hint", "tagi"]


def links(run_dir: Path, teachers: Path) -> list[str]:
    pretrain = run_dir / "pretrain" / "checkpoints" / "last.ckpt"
    missing = [str(path) for path in (run_dir / THETA0, pretrain, teachers) if not path.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run the setting's pipeline first "
                         f"(python -m tagi pipeline --config configs/<setting>/pipeline.yaml)")
    return [f"--model.init_args.init_from={pretrain}", f"--model.init_args.teachers={teachers}"]


def run_variant(setting: str, name: str, seed: int, run_dir: Path, pipeline_links: list[str]) -> dict:
    config, overrides, linked = VARIANTS[name]
    config = str(ROOT / "configs" / setting / config)
    if name in OWN_PRETRAIN:
        overrides = [*overrides, f"--model.init_args.init_from={own_pretrain(setting, name, run_dir)}"]
    # The seed must reach the data order too: a warm-started hypernetwork has no random init to vary.
    extra = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}", f"--model.init_args.backbone.name={run_dir / THETA0}",
             *(pipeline_links if linked else []), *overrides]
    folder = run_dir / "quality"
    done = _fit(f"{name}-seed{seed}", config, folder, extra, force=False)
    results = folder / f"{name}-seed{seed}-test" / "results.json"
    if results.is_file() and json.loads(results.read_text())["checkpoint"] == done["last_checkpoint"]:
        scores = json.loads(results.read_text())["overall"]  # tested already (a rerun adds variants or seeds)
    else:
        scores = _test(config, folder, done["last_checkpoint"], extra, f"{name}-seed{seed}-test")
    return {"rougeL": scores["rougeL"], "exact_match": scores["exact_match"], "train_seconds": done.get("seconds")}


def own_pretrain(setting: str, name: str, run_dir: Path) -> str:
    """Stage 2 for a variant whose architecture differs from the pipeline's (seed 0, the pipeline's step budget)."""
    config, overrides = OWN_PRETRAIN[name]
    extra = ["--seed_everything=0", f"--model.init_args.backbone.name={run_dir / THETA0}", *overrides]
    return _fit(f"{name}-pretrain", str(ROOT / "configs" / setting / config), run_dir / "quality", extra, force=False)["last_checkpoint"]


def summarise(raw: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, runs in raw.items():
        row = {"variant": name, "seeds": len(runs)}
        for metric in ("rougeL", "exact_match"):
            values = [run[metric] for run in runs]
            row[metric] = statistics.mean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| variant | seeds | ROUGE-L | exact match |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['seeds']} | {row['rougeL']:.2f} ± {row['rougeL_std']:.2f} | "
                     f"{row['exact_match']:.2f} ± {row['exact_match_std']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    names = [row["variant"] for row in rows]
    ax.bar(names, [row["rougeL"] for row in rows], yerr=[row["rougeL_std"] for row in rows], capsize=4, color="#4c72b0")
    ax.set_ylabel("held-out ROUGE-L")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=BASELINES, choices=list(VARIANTS))
    parser.add_argument("--checkpoints-dir", default="checkpoints")
    parser.add_argument("--teachers-dir", default="teachers")
    args = parser.parse_args(argv)
    run_dir = Path(args.checkpoints_dir) / args.setting
    pipeline_links = links(run_dir, Path(args.teachers_dir) / args.setting)
    start, raw = time.perf_counter(), {}
    for name in args.variants:
        raw[name] = [run_variant(args.setting, name, seed, run_dir, pipeline_links) for seed in args.seeds]
    rows = summarise(raw)
    out = Path("runs/quality") / args.setting
    out.mkdir(parents=True, exist_ok=True)
    seconds = round(time.perf_counter() - start, 1)
    text = f"## Held-out quality — {args.setting}, seeds {args.seeds} ({seconds} s)\n\n{table(rows)}\n"
    (out / "quality.md").write_text(text)
    (out / "quality.json").write_text(json.dumps({"rows": rows, "raw": raw, "seconds": seconds}, indent=2) + "\n")
    plot(rows, out / "quality.png", f"{args.setting}: held-out ROUGE-L (mean ± std, {len(args.seeds)} seed(s))")
    print(text)
    return rows


if __name__ == "__main__":
    main()
