"""Evaluation scores as the Super-NaturalInstructions (SNI) papers report them.

Per example: ROUGE-L F1 (Google `rouge-score` semantics: lowercase, non-alphanumerics → spaces,
Porter stemming of tokens longer than 3 characters, max over references) and exact match after
SNI's `normalize_answer` (max over references). Aggregates: mean over examples overall, per task
and per task category, reported ×100.

ROUGE-L comes from torchmetrics. Its default normaliser/tokeniser and nltk's PorterStemmer are
the same steps as Google's `rouge_score.tokenize` (the one difference, Google's final
`^[a-z0-9]+$` token filter, cannot fire: normalised tokens are already [a-z0-9]+ and Porter keeps
them so), so no custom tokenizer is needed. The only deviation is float32 rounding of the
per-example score (|Δ| < 1e-7); `benchmarks/rouge_check.py` measures it on 1,100 real cases.
"""

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.text.rouge import rouge_score
from torchmetrics.utilities import dim_zero_cat

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SNI's `compute_metrics.normalize_answer`: lowercase, drop ASCII punctuation, squeeze spaces.

    Unlike SQuAD's original, SNI keeps articles ("adapted from Squad v1.1 evaluation, without
    removing the articles"), so "the cat" and "cat" do not match.
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    _check_references(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in references))


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F1 in [0, 1] with Porter stemming, best over references (0 for empty text)."""
    _check_references(references)
    scores = rouge_score(
        [prediction], [list(references)], accumulate="best", use_stemmer=True, rouge_keys="rougeL"
    )
    return scores["rougeL_fmeasure"].item()


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str) or len(references) == 0:
        raise ValueError(f"references must be a non-empty list of strings, got {references!r}")


class InstructionMetrics(Metric):
    """ROUGE-L and exact match per task, per category and overall (SNI convention, ×100).

    `tasks`: the evaluation tasks as `[(task_name, category), ...]`. States are per-example score
    lists concatenated across processes, so every aggregate is exact under DDP.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, tasks: Sequence[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_category: dict[str, str] = {}
        for name, category in tasks:
            if self.task_category.setdefault(name, category) != category:
                known = self.task_category[name]
                raise ValueError(f"task {name!r} given with two categories: {known!r} and {category!r}")
        self._task_index = {name: i for i, name in enumerate(self.task_category)}
        self.add_state("rouge_l", default=[], dist_reduce_fx="cat")
        self.add_state("exact_match", default=[], dist_reduce_fx="cat")
        self.add_state("task_ids", default=[], dist_reduce_fx="cat")

    def update(
        self, predictions: Sequence[str], references: Sequence[Sequence[str]], task_names: Sequence[str]
    ) -> None:
        if not len(predictions) == len(references) == len(task_names):
            raise ValueError(
                f"got {len(predictions)} predictions, {len(references)} reference lists and "
                f"{len(task_names)} task names"
            )
        for name in task_names:
            if name not in self._task_index:
                raise KeyError(f"unknown task {name!r}; this metric was built for {list(self._task_index)}")
        pairs = list(zip(predictions, references))
        self.rouge_l.append(torch.tensor([rouge_l(p, r) for p, r in pairs], device=self.device))
        self.exact_match.append(torch.tensor([exact_match(p, r) for p, r in pairs], device=self.device))
        ids = [self._task_index[t] for t in task_names]
        self.task_ids.append(torch.tensor(ids, dtype=torch.long, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        """Flat dict for `log_dict`: `rougeL`, `exact_match`, `count`, each also with
        `/task/<name>` and `/category/<cat>` suffixes (only for groups that have examples)."""
        rouge, em, ids = (self._cat(state) for state in (self.rouge_l, self.exact_match, self.task_ids))
        out = _summary("", rouge, em)
        for name, index in self._task_index.items():
            out |= _summary(f"/task/{name}", rouge[ids == index], em[ids == index])
        for category in dict.fromkeys(self.task_category.values()):
            members = [i for t, i in self._task_index.items() if self.task_category[t] == category]
            selected = torch.isin(ids, torch.tensor(members, device=ids.device))
            out |= _summary(f"/category/{category}", rouge[selected], em[selected])
        return {key: value for key, value in out.items() if not _empty_group(key, out)}

    def _cat(self, state: list[Tensor] | Tensor) -> Tensor:
        # Before any update the state is an empty list, which dim_zero_cat refuses.
        return dim_zero_cat(state) if len(state) else torch.zeros(0, device=self.device)


def _summary(suffix: str, rouge: Tensor, em: Tensor) -> dict[str, Tensor]:
    # Counts as float tensors too, so that `log_dict` can take the whole dict.
    return {
        f"rougeL{suffix}": 100 * rouge.mean(),
        f"exact_match{suffix}": 100 * em.mean(),
        f"count{suffix}": torch.tensor(float(rouge.numel()), device=rouge.device),
    }


def _empty_group(key: str, out: Mapping[str, Tensor]) -> bool:
    """True for the entries of a task/category group with no examples (the overall ones stay)."""
    metric, _, group = key.partition("/")
    return bool(group) and out[f"count/{group}"].item() == 0


def results_table(metrics: Mapping[str, float | Tensor]) -> str:
    """Markdown table of an `InstructionMetrics.compute()` dict: per task, per category, overall."""
    rows = [
        (scope, key.split("/", 2)[2], key.removeprefix("count"))
        for scope in ("task", "category")
        for key in metrics
        if key.startswith(f"count/{scope}/")
    ]
    rows.append(("overall", "all", ""))
    lines = ["| scope | name | examples | rougeL | exact_match |", "|---|---|---:|---:|---:|"]
    for scope, name, suffix in rows:
        count, rouge, em = (float(metrics[f"{m}{suffix}"]) for m in ("count", "rougeL", "exact_match"))
        name = name.replace("|", "\\|")  # a literal | would split the Markdown cell
        lines.append(f"| {scope} | {name} | {int(count)} | {rouge:.2f} | {em:.2f} |")
    return "\n".join(lines)
