"""Inference cost per task: TAGI (instruction once, then the inputs) vs instruction concatenation.

    python benchmarks/inference_cost.py [--shapes t5-small t5-base] [--examples 100]

Random weights at the real T5 shapes (cost does not depend on the values), no downloads. For each
shape and instruction form (`Def`, `Def+2Pos`) it serves one task of n examples both ways with
`tagi.eval.cost.task_cost` (FLOPs from torch.utils.flop_counter, CPU wall time): TAGI with the LoRA
merged into the weights (one task per call) and batched (per-row LoRA, as in a mixed-task batch),
against the concatenation baseline. It prints a table, and
plots cost against instruction length to runs/inference-cost/cost_vs_instruction.png. The rows
of the measured shapes replace theirs in docs/results/inference-cost.json (other shapes' rows are
kept, each with its commit), from which the README's table is generated (`python -m tagi.eval.results`).
The hypernetwork is the shipped real-scale architecture (configs/sni-t5-base/parts/architecture.yaml).
Token lengths are typical of SNI with the T5 tokenizer: definitions ~ 60 tokens, two positive
examples ~ 2 × 120 more, inputs ~ 100, targets ~ 10.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagi.eval.cost import task_cost  # noqa: E402
from tagi.modeling.backbone import tiny_t5_config  # noqa: E402
from tagi.modeling.model import TAGIModel  # noqa: E402
from transformers import T5ForConditionalGeneration  # noqa: E402

SHAPES = {  # T5 v1.1 / LM-adapt shapes (gated-GELU feed-forward)
    "t5-small": dict(d_model=512, num_layers=8, num_heads=6, d_kv=64, d_ff=1024),
    "t5-base": dict(d_model=768, num_layers=12, num_heads=12, d_kv=64, d_ff=2048),
}
FORMS = {"Def": 60, "Def+2Pos": 300}  # instruction tokens
ARCHITECTURE = ROOT / "configs" / "sni-t5-base" / "parts" / "architecture.yaml"
RESULTS = ROOT / "docs" / "results" / "inference-cost.json"
INPUT_TOKENS, TARGET_TOKENS = 100, 10


def build(shape: str) -> TAGIModel:
    torch.manual_seed(0)
    sizes = SHAPES[shape]
    config = tiny_t5_config(vocab_size=32128, d_model=sizes["d_model"], num_layers=sizes["num_layers"],
                            num_heads=sizes["num_heads"], d_kv=sizes["d_kv"], d_ff=sizes["d_ff"],
                            relative_attention_num_buckets=32, relative_attention_max_distance=128)
    import yaml

    return TAGIModel(T5ForConditionalGeneration(config), **yaml.safe_load(ARCHITECTURE.read_text())).eval()


def one_task(model: TAGIModel, instruction_tokens: int, examples: int, repeats: int, batched: bool = False):
    g = torch.Generator().manual_seed(0)
    ids = lambda rows, length: torch.randint(3, 32000, (rows, length), generator=g)  # noqa: E731
    ones = lambda rows, length: torch.ones(rows, length, dtype=torch.long)  # noqa: E731
    instruction = (ids(1, instruction_tokens), ones(1, instruction_tokens))
    inputs = (ids(examples, INPUT_TOKENS), ones(examples, INPUT_TOKENS))
    concat_len = instruction_tokens + INPUT_TOKENS
    concat = (torch.cat([instruction[0].expand(examples, -1), inputs[0]], 1), ones(examples, concat_len))
    return task_cost(model, instruction, inputs, concat, ids(examples, TARGET_TOKENS), batch_size=25, repeats=repeats,
                     batched=batched)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sweep", type=int, nargs="*", default=[30, 60, 150, 300, 600],
                        help="instruction lengths to plot (none: no plot)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "inference-cost"), help="folder for the JSON and the plot")
    parser.add_argument("--results", default=str(RESULTS), help="summary JSON the README is generated from")
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, sweep, start = [], {}, time.perf_counter()
    for shape in args.shapes:
        model = build(shape)
        for form, length in FORMS.items():
            cost = one_task(model, length, args.examples, args.repeats, batched=True)
            rows.append({"shape": shape, "form": form, "instruction_tokens": length, **cost.as_dict()})
        if args.sweep:
            sweep[shape] = [(length, one_task(model, length, args.examples, 1)) for length in args.sweep]
    print(table(rows, args.examples))
    if sweep:
        plot(sweep, out / "cost_vs_instruction.png")
        plot(sweep, Path(args.results).with_suffix(".png"))
    (out / "inference_cost.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_results(Path(args.results), rows, args.examples)
    print(f"\n({time.perf_counter() - start:.0f} s; written to {out})")
    return rows


def write_results(path: Path, rows: list[dict], examples: int) -> None:
    """Merge this run's shapes into the summary: a t5-small run keeps the t5-base rows and vice versa."""
    from tagi.eval.results import git_commit

    commit, measured = git_commit(ROOT), {row["shape"] for row in rows}
    kept = json.loads(path.read_text())["costs"] if path.is_file() else []
    fresh = [{"shape": r["shape"], "form": r["form"], "instruction_tokens": r["instruction_tokens"], "commit": commit,
              "threads": torch.get_num_threads(), "tagi": r["tagi"], "baseline": r["baseline"],
              "ratio": r["ratio_tagi_over_baseline"]} for r in rows]
    costs = [row for row in kept if row["shape"] not in measured] + fresh
    order = list(SHAPES)
    costs.sort(key=lambda row: (order.index(row["shape"]) if row["shape"] in order else len(order), row["instruction_tokens"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    # "commit": the newest run's; each row keeps the commit it was measured on
    path.write_text(json.dumps({"commit": commit, "examples": examples, "costs": costs}, indent=2) + "\n")


def table(rows: list[dict], examples: int) -> str:
    lines = [f"| shape | instruction | TAGI GFLOPs | concat GFLOPs | FLOPs ratio | TAGI s | concat s | time ratio "
             f"| batched FLOPs ratio | batched time ratio |  (one task, {examples} examples)",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratio = row["ratio_tagi_over_baseline"]
        lines.append(f"| {row['shape']} | {row['form']} ({row['instruction_tokens']} tok) | {row['tagi']['flops'] / 1e9:.1f} | "
                     f"{row['baseline']['flops'] / 1e9:.1f} | {ratio['flops']:.3f} | {row['tagi']['seconds']:.2f} | "
                     f"{row['baseline']['seconds']:.2f} | {ratio['seconds']:.3f} | {ratio['flops_batched']:.3f} | "
                     f"{ratio['seconds_batched']:.3f} |")
    return "\n".join(lines)


def plot(sweep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for shape, points in sweep.items():
        lengths = [length for length, _ in points]
        ax.plot(lengths, [c.tagi.flops / 1e9 for _, c in points], marker="o", label=f"TAGI {shape}")
        ax.plot(lengths, [c.baseline.flops / 1e9 for _, c in points], marker="s", linestyle="--", label=f"concat {shape}")
    ax.set_xlabel("instruction tokens")
    ax.set_ylabel("GFLOPs per task (100 examples)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
