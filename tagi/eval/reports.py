"""What `test` and `predict` leave behind: `results.json` + `results.md`, and `predictions.jsonl`.

Lightning-free. Predictions stream to a hidden temporary file, one JSON line per example, and are
renamed into place only when the epoch ends: a large test set never sits in memory, and a killed
run never leaves a partial file under the final name (a failed one, a full disk, none at all).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tagi.io import AtomicFile, atomic_write_text
from tagi.eval.metrics import results_table

RESULTS_JSON, RESULTS_MD, PREDICTIONS = "results.json", "results.md", "predictions.jsonl"
METRICS = ("rougeL", "exact_match", "count")


def _group(scores: Mapping[str, float], suffix: str) -> dict[str, float]:
    values = {name: float(scores[f"{name}{suffix}"]) for name in METRICS}
    values["count"] = int(values["count"])
    return values


def results_document(scores: Mapping[str, float], task_category: Mapping[str, str], meta: Mapping) -> dict:
    """Nested form of an `InstructionMetrics.compute()` dict: overall, per category, per task."""
    tasks = {name: {"category": category, **_group(scores, f"/task/{name}")}
             for name, category in task_category.items() if f"count/task/{name}" in scores}
    categories = {category: _group(scores, f"/category/{category}")
                  for category in dict.fromkeys(task_category.values()) if f"count/category/{category}" in scores}
    overall = _group(scores, "")
    if "rank_accuracy" in scores:  # multiple-choice rows scored by rank classification
        overall.update(rank_accuracy=float(scores["rank_accuracy"]), rank_count=int(scores["rank_count"]))
    return {**meta, "overall": overall, "categories": categories, "tasks": tasks}


def write_results(out_dir: str | os.PathLike, scores: Mapping[str, float], task_category: Mapping[str, str],
                  meta: Mapping, extra_markdown: str = "") -> Path:
    """`results.json` and `results.md` in `out_dir`, each written atomically; returns the JSON path."""
    out = Path(out_dir)
    document = results_document(scores, task_category, meta)
    atomic_write_text(out / RESULTS_JSON, json.dumps(document, indent=2, sort_keys=True) + "\n")
    header = f"# Test results — {meta.get('model', 'model')}\n\n"
    atomic_write_text(out / RESULTS_MD, header + results_table(scores) + "\n" + extra_markdown)
    return out / RESULTS_JSON


class PredictionWriter:
    """Streams {task, id, input, prediction, references} lines; `close()` publishes the file, `discard()`
    (or a failed write: a full disk) removes it, leaving what `path` held before."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = AtomicFile(self.path, "w")
        self.count = 0

    def write(self, tasks: Sequence[str], ids: Sequence[str], inputs: Sequence[str], predictions: Sequence[str],
              references: Sequence[Sequence[str]]) -> None:
        rows = (dict(zip(("task", "id", "input", "prediction", "references"), row))
                for row in zip(tasks, ids, inputs, predictions, references))
        self._file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.count += len(predictions)

    def close(self) -> Path:
        return self._file.commit()

    def discard(self) -> None:
        self._file.discard()


def read_predictions(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
