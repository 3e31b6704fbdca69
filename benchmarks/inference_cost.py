"""Inference cost per task: TAGI (instruction once, then the inputs) vs instruction concatenation.

    python benchmarks/inference_cost.py [--shapes t5-small t5-base smollm2-135m] [--examples 100]

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

Decoder-only (`smollm2-135m`: SmolLM2-135M-Instruct's shape, random weights, the architecture of
configs/smollm2-ni-v1): TAGI reads no instruction in its prompt, so it is also compared with what a
decoder-only user gets for free, the concatenation with the instruction's key/value cache computed once
per task and reused for every input (prefix caching). Lengths measured with SmolLM2's tokenizer on NI v1
(medians): `Def` 160 tokens, `Def+2Pos` 350, the input in its chat turn ~ 100.
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

from tagi.eval.cost import Cost, measure, task_cost  # noqa: E402
from tagi.modeling.backbone import tiny_llama_config, tiny_t5_config  # noqa: E402
from tagi.modeling.model import TAGIModel  # noqa: E402
from transformers import LlamaForCausalLM, T5ForConditionalGeneration  # noqa: E402

SHAPES = {  # T5 v1.1 / LM-adapt shapes (gated-GELU feed-forward), and SmolLM2-135M's (Llama, grouped-query attention)
    "t5-small": dict(d_model=512, num_layers=8, num_heads=6, d_kv=64, d_ff=1024),
    "t5-base": dict(d_model=768, num_layers=12, num_heads=12, d_kv=64, d_ff=2048),
    "smollm2-135m": dict(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536,
                         vocab_size=49152, rope_theta=100000.0),
}
CAUSAL = {"smollm2-135m"}
FORMS = {"Def": 60, "Def+2Pos": 300}  # instruction tokens
CAUSAL_FORMS = {"Def": 160, "Def+2Pos": 350}
ARCHITECTURE = ROOT / "configs" / "sni-t5-base" / "parts" / "architecture.yaml"
CAUSAL_ARCHITECTURE = ROOT / "configs" / "smollm2-ni-v1" / "parts" / "architecture.yaml"
RESULTS = ROOT / "docs" / "results" / "inference-cost.json"
INPUT_TOKENS, TARGET_TOKENS = 100, 10


def build(shape: str) -> TAGIModel:
    import yaml

    torch.manual_seed(0)
    sizes = SHAPES[shape]
    if shape in CAUSAL:
        backbone = LlamaForCausalLM(tiny_llama_config(**sizes))
        return TAGIModel(backbone, **yaml.safe_load(CAUSAL_ARCHITECTURE.read_text())).eval()
    config = tiny_t5_config(vocab_size=32128, d_model=sizes["d_model"], num_layers=sizes["num_layers"],
                            num_heads=sizes["num_heads"], d_kv=sizes["d_kv"], d_ff=sizes["d_ff"],
                            relative_attention_num_buckets=32, relative_attention_max_distance=128)
    return TAGIModel(T5ForConditionalGeneration(config), **yaml.safe_load(ARCHITECTURE.read_text())).eval()


def prefix_cached(model: TAGIModel, instruction: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                  batch_size: int, repeats: int) -> Cost:
    """The concatenation as a decoder-only server runs it with prefix caching: the instruction's keys and values
    computed once per task, then every batch of inputs (and its teacher-forced target) attends to them.
    instruction (1, L), inputs (n, T), labels (n, Y)."""
    import copy

    backbone = model.backbone

    def serve() -> None:
        prefix = backbone(input_ids=instruction, use_cache=True, logits_to_keep=1).past_key_values  # once per task
        for start in range(0, inputs.shape[0], batch_size):
            ids = torch.cat([inputs[start:start + batch_size], labels[start:start + batch_size]], 1)  # (b, T + Y)
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(ids.shape[0])
            mask = torch.ones(ids.shape[0], instruction.shape[1] + ids.shape[1], dtype=torch.long)
            backbone(input_ids=ids, attention_mask=mask, past_key_values=cache, logits_to_keep=labels.shape[1])

    return measure(serve, repeats)


def one_task(model: TAGIModel, instruction_tokens: int, examples: int, repeats: int, batched: bool = False):
    g = torch.Generator().manual_seed(0)
    ids = lambda rows, length: torch.randint(3, 32000, (rows, length), generator=g)  # noqa: E731
    ones = lambda rows, length: torch.ones(rows, length, dtype=torch.long)  # noqa: E731
    instruction = (ids(1, instruction_tokens), ones(1, instruction_tokens))
    inputs = (ids(examples, INPUT_TOKENS), ones(examples, INPUT_TOKENS))
    concat_len = instruction_tokens + INPUT_TOKENS
    concat = (torch.cat([instruction[0].expand(examples, -1), inputs[0]], 1), ones(examples, concat_len))
    labels = ids(examples, TARGET_TOKENS)
    cost = task_cost(model, instruction, inputs, concat, labels, batch_size=25, repeats=repeats, batched=batched)
    cached = None if model.family.reads_instruction_states else prefix_cached(model, instruction[0], inputs[0], labels, 25, repeats)
    return cost, cached


def forms(shape: str) -> dict[str, int]:
    return CAUSAL_FORMS if shape in CAUSAL else FORMS


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
        for form, length in forms(shape).items():
            cost, cached = one_task(model, length, args.examples, args.repeats, batched=True)
            extra = {} if cached is None else {"prefix_cached": {"flops": cached.flops, "seconds": cached.seconds}}
            rows.append({"shape": shape, "form": form, "instruction_tokens": length, **cost.as_dict(), **extra})
        if args.sweep and shape not in CAUSAL:
            sweep[shape] = [(length, one_task(model, length, args.examples, 1)[0]) for length in args.sweep]
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
              "ratio": {**r["ratio_tagi_over_baseline"], **cached_ratios(r)},
              **({"prefix_cached": r["prefix_cached"]} if "prefix_cached" in r else {})} for r in rows]
    costs = [row for row in kept if row["shape"] not in measured] + fresh
    order = list(SHAPES)
    costs.sort(key=lambda row: (order.index(row["shape"]) if row["shape"] in order else len(order), row["instruction_tokens"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    # "commit": the newest run's; each row keeps the commit it was measured on
    path.write_text(json.dumps({"commit": commit, "examples": examples, "costs": costs}, indent=2) + "\n")


def cached_ratios(row: dict) -> dict[str, float]:
    """TAGI over the prefix-cached concatenation, where it was measured."""
    if "prefix_cached" not in row:
        return {}
    cached, tagi = row["prefix_cached"], row["tagi"]
    return {"flops_vs_cached": tagi["flops"] / cached["flops"], "seconds_vs_cached": tagi["seconds"] / cached["seconds"]}


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
        if "prefix_cached" in row:
            cached, vs = row["prefix_cached"], cached_ratios(row)
            lines.append(f"|   | prefix-cached concat: {cached['flops'] / 1e9:.1f} GFLOPs, {cached['seconds']:.2f} s; "
                         f"TAGI / cached: FLOPs {vs['flops_vs_cached']:.3f}, time {vs['seconds_vs_cached']:.3f} |")
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
