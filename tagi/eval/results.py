"""Per-example scores, paired bootstrap intervals, and the README's generated results blocks.

Lightning- and torch-free at import (`per_example` loads the scorers lazily), so the README check
runs anywhere. A README block is

    <!-- results: quality-demo -->
    ...generated from docs/results/quality-demo.json...
    <!-- /results -->

and a value in prose is `<!-- value: quality-ni-v1 variants/concat/mean/exact_match .2f -->0.00<!-- /value -->`
(the JSON value at that path, formatted). `python -m tagi.eval.results --check` fails when any block's or
value's text is not what its JSON renders to, and when a measured number is typed by hand (`untraced_numbers`);
`--write` regenerates blocks and values in place.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

METRIC_NAMES = {"exact_match": ("EM", "exact match"), "rougeL": ("ROUGE-L", "ROUGE-L")}
CONTROLS = ("real", "paraphrase", "other_task", "empty", "random")
DASH = "–"
BLOCK = re.compile(r"(<!--\s*results:\s*([\w./-]+)\s*-->)(.*?)(<!--\s*/results\s*-->)", re.DOTALL)
OPENING = re.compile(r"<!--\s*results:")
VALUE = re.compile(r"(<!--\s*value:\s*([\w./-]+)\s+(.+?)\s+(\S+)\s*-->)(.*?)(<!--\s*/value\s*-->)")
_CHUNK = 1 << 22  # bootstrap indices drawn per batch (32 MB of int64)


# --- per-example scores and the paired bootstrap --------------------------------------------------


def per_example(predictions_path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """`{"<task>/<id>": {"rougeL": …, "exact_match": …}}` (×100) for a `predictions.jsonl`."""
    from tagi.eval.metrics import exact_match, rouge_l  # torch-backed: imported only when scoring
    from tagi.eval.reports import read_predictions

    scores: dict[str, dict[str, float]] = {}
    for row in read_predictions(predictions_path):
        key = f"{row['task']}/{row['id']}"
        if key in scores:
            raise ValueError(f"{predictions_path}: example {key!r} appears twice")
        pred, refs = row["prediction"], row["references"]
        scores[key] = {"rougeL": 100 * rouge_l(pred, refs), "exact_match": 100 * exact_match(pred, refs)}
    return scores


def paired_bootstrap(a: Mapping[str, Mapping[str, Mapping[str, float]]],
                     b: Mapping[str, Mapping[str, Mapping[str, float]]],
                     metric: str = "exact_match", n_resamples: int = 10000, seed: int = 0) -> dict:
    """Mean A−B difference of `metric` over seeds, with a two-level paired bootstrap 95% interval.

    `a`, `b`: seed → `per_example` dict, same seeds and, per seed, same example keys. Each resample
    draws seeds with replacement, then examples with replacement within every drawn seed (the same
    examples for A and B) and averages the differences. `examples` is the per-seed count (a list in
    seed order if seeds differ).
    """
    diffs = _differences(a, b, metric)
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(diffs), size=(n_resamples, len(diffs)))
    means = np.empty(draws.shape)
    for index, d in enumerate(diffs):  # every position where seed `index` was drawn gets its own resample
        chosen = draws == index
        means[chosen] = _resampled_means(rng, d, int(chosen.sum()))
    lo, hi = np.percentile(means.mean(axis=1), [2.5, 97.5])
    sizes = [len(d) for d in diffs]
    return {"metric": metric, "mean": _round(np.mean([d.mean() for d in diffs])), "ci95": [_round(lo), _round(hi)],
            "seeds": len(diffs), "examples": sizes[0] if len(set(sizes)) == 1 else sizes}


def _differences(a: Mapping, b: Mapping, metric: str) -> list[np.ndarray]:
    """Per seed (sorted), the A−B differences over the sorted example keys; checks the pairing."""
    if set(a) != set(b):
        raise ValueError(f"A and B have different seeds: A {sorted(a)}, B {sorted(b)}")
    if not a:
        raise ValueError("no seeds to compare")
    diffs = []
    for s in sorted(a):
        keys = sorted(a[s])
        if set(keys) != set(b[s]):
            only_a, only_b = sorted(set(a[s]) - set(b[s]))[:3], sorted(set(b[s]) - set(a[s]))[:3]
            raise ValueError(f"seed {s!r}: A and B score different examples (only in A: {only_a}, "
                             f"only in B: {only_b})")
        if not keys:
            raise ValueError(f"seed {s!r}: no examples")
        diffs.append(np.array([a[s][k][metric] - b[s][k][metric] for k in keys], dtype=float))
    return diffs


def _resampled_means(rng: np.random.Generator, d: np.ndarray, count: int) -> np.ndarray:
    """`count` bootstrap means of `d`, drawn in batches that bound the index memory."""
    rows = max(1, _CHUNK // len(d))
    parts = [d[rng.integers(len(d), size=(min(rows, count - start), len(d)))].mean(axis=1)
             for start in range(0, count, rows)]
    return np.concatenate(parts) if parts else np.empty(0)


def _round(value: float) -> float:
    return round(float(value), 2) + 0.0  # + 0.0 turns -0.0 into 0.0


def git_commit(root: str | os.PathLike | None = None) -> str:
    """The checkout's HEAD commit (+ "-dirty" with uncommitted changes to tracked files), or "unknown".
    Changes under docs/results/ do not count: they are what the benchmarks write, not what they run."""
    import subprocess

    cwd = Path(root) if root else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)docs/results"],
                               cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


# --- Markdown renderers ---------------------------------------------------------------------------


def render_block(name: str, data: Mapping) -> str:
    """Markdown for one results file: `variants` → quality tables, `rows` → demo table."""
    if "variants" in data:
        return _render_quality(data)
    if "rows" in data:
        return _render_demo(data)
    if any(isinstance(v, Mapping) and "trainable" in v for v in data.values()):
        return _render_training_cost(data)
    if "costs" in data:
        return _render_inference_cost(data)
    if "hand_offs" in data:
        return _render_rehearsal(data)
    raise ValueError(f"results {name!r}: no 'variants', 'rows', 'costs', 'hand_offs' or per-shape 'trainable' in its JSON "
                     f"(keys {sorted(data)})")


def _render_quality(data: Mapping) -> str:
    metric, split = data.get("metric", "exact_match"), data.get("split", "test")
    other = "rougeL" if metric != "rougeL" else "exact_match"
    short, short_other = _short(metric), _short(other)
    validation, paired = data.get("validation", {}), data.get("paired", {})
    lines = [f"| variant | {split} {short} | {split} {short} per seed | {split} {short_other} | val {short} "
             f"| {split} Δ vs reference [95% CI] |", "|---|---:|---:|---:|---:|---|"]
    for name, v in data["variants"].items():
        per_seed = " / ".join(_num(s.get(metric)) for s in v.get("per_seed", {}).values()) or DASH
        val = validation.get(name, {}).get("mean", {}).get(metric)
        deltas = [_delta(key.removeprefix(f"{name} - "), p, metric) for key, p in paired.items()
                  if key.startswith(f"{name} - ")]
        cells = [_variant(name, v), _pm(v, metric), per_seed, _pm(v, other),
                 DASH if val is None else _num(val), "; ".join(deltas) or DASH]
        lines.append(_row(cells))
    with_controls = {name: v["controls"] for name, v in data["variants"].items()
                     if any(c != "real" for c in v.get("controls") or {})}  # tested with at least one control
    if with_controls:
        lines += ["", _row(["variant", *(f"{split} {short}, {c}" for c in CONTROLS)]),
                  "|---|" + "---:|" * len(CONTROLS)]
        lines += [_row([_variant(name, data["variants"][name]), *(_num(c.get(k)) for k in CONTROLS)])
                  for name, c in with_controls.items()]
    seeds = sorted({s for v in data["variants"].values() for s in v.get("per_seed", {})}, key=_seed_order)
    lines += ["", f"Split: {split}; metric: {METRIC_NAMES.get(metric, (metric, metric))[1]} (headline), "
                  f"{METRIC_NAMES.get(other)[1]}; mean ± std over seeds {', '.join(seeds) or DASH}; "
                  f"Δ: paired two-level bootstrap; {_footer(data)}."]
    lines += [f"{check}: {value}" for check, value in data.get("checks", {}).items()]
    return "\n".join(lines)


def _render_demo(data: Mapping) -> str:
    """Only the scores: a rerun of the demo (same code) must render the same text, and its commit
    and wall time differ from run to run (they stay in the JSON)."""
    lines = [f"| model ({data.get('split', 'test')} tasks) | exact match | ROUGE-L |", "|---|---:|---:|"]
    lines += [_row([label, _num(r.get("exact_match")), _num(r.get("rougeL"))]) for label, r in data["rows"].items()]
    return "\n".join(lines)


def short_commit(commit) -> str:
    """A commit as a table footer names it: 10 characters, and "-dirty" kept (uncommitted changes when it ran)."""
    text = str(commit)
    return text[:10] + ("-dirty" if text.endswith("-dirty") else "")


def _render_training_cost(data: Mapping) -> str:
    """Per shape: the finetune stage's trainable weights by part and its full step against a peft-LoRA step."""
    shapes = {name: v for name, v in data.items() if isinstance(v, Mapping) and "trainable" in v}
    parts = list(dict.fromkeys(part for v in shapes.values() for part in v.get("trainable_by_part", {})))
    lines = [_row(["shape", "trainable", *parts, "step × peft", "peak memory × peft"]),
             "|---|" + "---:|" * (len(parts) + 3)]
    for name, v in shapes.items():
        by_part = v.get("trainable_by_part", {})
        lines.append(_row([name, _millions(v["trainable"]), *(_millions(by_part.get(p, 0)) for p in parts),
                           _num(v.get("step_ratio")), _num(v.get("peak_ratio"))]))
    lines += ["", f"{data.get('device', DASH)}, {data.get('threads', DASH)} threads, median of {data.get('steps', DASH)} "
                  f"steps; commit {short_commit(data.get('commit', DASH))}; {DASH} = not timed at this shape."]
    return "\n".join(lines)


def _render_inference_cost(data: Mapping) -> str:
    """One task of n examples, TAGI (hypernetwork once + the inputs) against instruction concatenation."""
    lines = [_row(["shape, instruction", "TAGI GFLOPs", "concat GFLOPs", "**FLOPs ratio**", "TAGI s", "concat s",
                   "**time ratio**", "batched FLOPs / time ratio", "vs prefix-cached concat: FLOPs / time ratio"]),
             "|---|" + "---:|" * 8]
    for row in data["costs"]:
        tagi, base, ratio = row["tagi"], row["baseline"], row["ratio"]
        cached = f"{ratio['flops_vs_cached']:.3f} / {ratio['seconds_vs_cached']:.3f}" if "flops_vs_cached" in ratio else DASH
        lines.append(_row([f"{row['shape']}, {row['form']} ({row['instruction_tokens']} tokens)",
                           f"{tagi['flops'] / 1e9:.1f}", f"{base['flops'] / 1e9:.1f}", f"**{ratio['flops']:.3f}**",
                           f"{tagi['seconds']:.2f}", f"{base['seconds']:.2f}", f"**{ratio['seconds']:.3f}**",
                           f"{ratio['flops_batched']:.3f} / {ratio['seconds_batched']:.3f}", cached]))
    commits = ", ".join(dict.fromkeys(f"{row['shape']} {short_commit(row['commit'])} ({row['threads']} threads)"
                                      for row in data["costs"]))
    lines += ["", f"{data.get('examples', DASH)} examples per task; commit per shape: {commits}."]
    return "\n".join(lines)


def _render_rehearsal(data: Mapping) -> str:
    """benchmarks/rehearsal.py: per stage what a step costs at the real shape, then each hand-off's outcome."""
    lines = [_row(["stage", "processes, strategy, precision", "batch / process", "wall s", "s / step",
                   "peak memory / process (GiB)", "all processes, PSS (GiB)", "trainable weights", "tokens / step"]),
             "|---|---|" + "---:|" * 7]
    for stage, v in data["stages"].items():
        run = f"{v['processes']} × {v['strategy']}, {v['precision']}" if "processes" in v else f"exit status {v['exit']}"
        lines.append(_row([stage, run, str(v.get("batch_size_per_process", DASH)), _num(v.get("wall_seconds")),
                           _num(v.get("seconds_per_step")),
                           _num(v.get("peak_rss_gib_per_process")),
                           _num(v.get("peak_pss_gib_tree")), _millions(v["trainable_weights"]) if "trainable_weights" in v else DASH,
                           str(v.get("tokens_per_step", DASH))]))
    too_big = [f"{stage} at batch {attempt['batch_size_per_process']} per process (peak {attempt['peak_pss_gib_tree']:.1f} GiB "
               f"for all processes, exit status {attempt['exit']})"
               for stage, v in data["stages"].items() for attempt in v.get("did_not_fit", [])]
    if too_big:
        lines += ["", "Killed for memory on this machine, so rerun at half the batch: " + "; ".join(too_big) + "."]
    lines += ["", "Hand-offs: " + "; ".join(f"{h['hand_off']} **{'pass' if h['pass'] else 'FAIL'}**" for h in data["hand_offs"]) + "."]
    lines += ["", f"{data['device']}, {data['shape']} shape, {data['data']}, {data['steps_per_stage']} steps per stage "
                  f"(s / step: median without the first); {_footer(data)}."]
    return "\n".join(lines)


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def _footer(data: Mapping) -> str:
    commit = short_commit(data.get("commit", DASH))
    made_at = data.get("made_at") or {}  # quality tables: how many runs and tests each commit made
    runs = "" if set(made_at) <= {commit} else \
        "; runs and tests made at " + ", ".join(f"{c} ({n})" for c, n in made_at.items())
    return f"commit {commit}; {_num(data.get('seconds'))} s of runs{runs}"


def _short(metric: str) -> str:
    return METRIC_NAMES.get(metric, (metric, metric))[0]


def _variant(name: str, v: Mapping) -> str:
    return f"{name} — {v['label']}" if v.get("label") else name


def _pm(v: Mapping, metric: str) -> str:
    mean, std = v.get("mean", {}).get(metric), v.get("std", {}).get(metric)
    return _num(mean) if std is None or mean is None else f"{_num(mean)} ± {_num(std)}"


def _delta(reference: str, p: Mapping, metric: str) -> str:
    lo, hi = p["ci95"]
    named = "" if p.get("metric", metric) == metric else f" {_short(p['metric'])}"
    return f"{p['mean']:+.2f}{named} [{lo:.2f}, {hi:.2f}] vs {reference}"


def _num(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _seed_order(seed: str) -> tuple:
    return (0, int(seed), "") if seed.isdigit() else (1, 0, seed)


# --- README blocks --------------------------------------------------------------------------------


def find_blocks(text: str) -> list[tuple[str, str]]:
    """`(name, content)` of every results block, in order; an unclosed or nested block raises."""
    blocks = [(m.group(2), m.group(3)) for m in BLOCK.finditer(text)]
    if len(OPENING.findall(text)) != len(blocks) or any(OPENING.search(c) for _, c in blocks):
        raise ValueError("a '<!-- results: … -->' marker has no matching '<!-- /results -->'")
    return blocks


def render_readme(text: str, results_dir: str | os.PathLike) -> str:
    """`text` with every results block's content regenerated from `results_dir/<name>.json`."""
    find_blocks(text)  # validates the markers

    def replace(match: re.Match) -> str:
        name, path = match.group(2), Path(results_dir) / f"{match.group(2)}.json"
        if not path.is_file():
            raise FileNotFoundError(f"README results block {name!r}: no results file {path}")
        content = render_block(name, json.loads(path.read_text(encoding="utf-8"))).strip("\n")
        return f"{match.group(1)}\n{content}\n{match.group(4)}"

    return render_values(BLOCK.sub(replace, text), results_dir)


def render_values(text: str, results_dir: str | os.PathLike) -> str:
    """`text` with every `<!-- value: FILE PATH FORMAT -->` regenerated: FILE's JSON at PATH (keys split
    on `/`), formatted with the Python format spec FORMAT."""
    def replace(match: re.Match) -> str:
        name, keys, spec = match.group(2), match.group(3), match.group(4)
        path = Path(results_dir) / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"README value {name} {keys}: no results file {path}")
        value = json.loads(path.read_text(encoding="utf-8"))
        for key in keys.split("/"):
            if not isinstance(value, Mapping) or key not in value:
                raise ValueError(f"README value {name} {keys}: {path} has no {key!r} there")
            value = value[key]
        return f"{match.group(1)}{format(value, spec)}{match.group(6)}"

    return VALUE.sub(replace, text)


# --- numbers typed by hand ------------------------------------------------------------------------

# What a measured result looks like: a percentage, a time, a memory size, a ratio (0.35×), or a score with
# two decimals. Counts, steps, lengths and learning rates (1e-3) have none of these shapes.
_MEASURED = re.compile(r"(?<![\w.])(?:\d+(?:\.\d+)?\s?(?:%|(?:s|ms|seconds|minutes|GiB|GB|MiB|MB)\b)"
                       r"|\d+\.\d+\s?×|\d+\.\d{2,}(?![\d.]))")
# Not a result although shaped like one: a bound (a target, a tolerance: ≤ 0.35×, < 10 %) and a confidence level.
_NOT_A_RESULT = re.compile(r"[≤≥<>~]\s*$|^\d+\s?% (?:interval|CI|confidence)")
_GENERATED = (BLOCK, VALUE, re.compile(r"```.*?```", re.DOTALL), re.compile(r"`[^`\n]*`"), re.compile(r"<!--.*?-->", re.DOTALL))
RESULTS_HEADING = "## Results"


def untraced_numbers(text: str, results_dir: str | os.PathLike) -> list[str]:
    """Measured numbers typed into the README instead of generated, as `line N: number: the line`:
    in the Results section, every number shaped like a measurement; anywhere, a decimal of three or more
    significant digits that equals a value in results_dir's JSON files (a copy that would drift from them). Generated
    blocks and values, code and comments are not prose."""
    prose, leaves = _prose(text), _json_numbers(Path(results_dir))
    section = _section(text, RESULTS_HEADING)
    found = []
    for number, match in enumerate(_MEASURED.finditer(prose)):
        token, before = match.group(0), prose[max(0, match.start() - 3):match.start()]
        if _NOT_A_RESULT.search(before) or _NOT_A_RESULT.match(prose[match.start():match.end() + 12]):
            continue
        copied = _significant_digits(token) >= 3 and token.replace("×", "").strip() in leaves
        if section[0] <= match.start() < section[1] or copied:
            line = prose.count("\n", 0, match.start())
            found.append(f"line {line + 1}: {token.strip()}: {text.splitlines()[line].strip()}")
    return found


def _significant_digits(token: str) -> int:
    """A copy is recognised at three significant digits or more (12.78, 0.698): fewer (0.01, a config's
    weight decay) match some value of the results files by chance."""
    digits = re.sub(r"\D", "", token.split()[0] if " " in token else token).lstrip("0")
    return len(digits) if "." in token else 0


def _prose(text: str) -> str:
    """`text` with generated and code spans blanked (newlines kept, so offsets and lines stay)."""
    for pattern in _GENERATED:
        text = pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return text


def _section(text: str, heading: str) -> tuple[int, int]:
    start = text.find(f"\n{heading}\n")
    if start < 0:
        return 0, 0
    end = text.find("\n## ", start + 1)
    return start, len(text) if end < 0 else end


def _json_numbers(folder: Path) -> set[str]:
    """Every number in the results files, as written at 1 to 3 decimals (how prose would copy it)."""
    numbers: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers.update(f"{value:.{d}f}" for d in (2, 3))

    for path in sorted(folder.rglob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return numbers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tagi.eval.results", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--results-dir", type=Path, default=Path("docs/results"))
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if any results block is stale")
    mode.add_argument("--write", action="store_true", help="regenerate the results blocks in place")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    try:
        rendered = render_readme(text, args.results_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.write:
        if rendered != text:
            args.readme.write_text(rendered, encoding="utf-8")
        print(f"{args.readme}: {len(find_blocks(text))} results blocks and {len(VALUE.findall(text))} values written")
        return 0
    stale = [(name, old, new) for (name, old), (_, new) in zip(find_blocks(text), find_blocks(rendered)) if old != new]
    for name, old, new in stale:
        print(f"results block {name!r} differs from {args.results_dir / (name + '.json')}:")
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                   f"{args.readme} (current)", f"{name}.json (rendered)"))
    values = [(old.group(2), old.group(3), old.group(5), new.group(5))
              for old, new in zip(VALUE.finditer(text), VALUE.finditer(rendered)) if old.group(5) != new.group(5)]
    for name, keys, old, new in values:
        print(f"README value {name} {keys}: {old!r} in {args.readme}, {new!r} in {args.results_dir / (name + '.json')}")
    if stale or values:
        print(f"run: python -m tagi.eval.results --readme {args.readme} --results-dir {args.results_dir} --write")
        return 1
    typed = untraced_numbers(text, args.results_dir)
    for line in typed:
        print(f"{args.readme} {line}")
    if typed:
        print("a measured number in the README is written as a value generated from docs/results "
              "(<!-- value: FILE PATH FORMAT -->…<!-- /value -->) or inside a results block")
        return 1
    print("README results are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
