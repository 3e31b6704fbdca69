"""Rank classification for multiple-choice tasks (the P3 / T0 convention).

Each answer option is scored by its length-normalised log-likelihood under the model, the mean
log-probability of its target tokens given the input, and the best-scoring option is the answer.
Works with any seq2seq scorer `logits(rows, labels) -> (B, Y, V)`: the backbone, a teacher, or
the student with its task's LoRA. Lightning-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric

from tagi.data.collate import IGNORE_INDEX, pad

Scorer = Callable[[Tensor, Tensor], Tensor]  # (rows (B,) indices into the inputs, labels (B, Y)) → logits (B, Y, V)


def option_scores(scorer: Scorer, options: Sequence[Sequence[Sequence[int]]], pad_id: int) -> list[Tensor]:
    """Mean target-token log-likelihood of every option of every example: a (K_i,) tensor per example.

    `options[i][k]`: token ids of option k of example i, EOS included. All options of all
    examples go through the scorer in one batch: row j repeats its example's input.
    """
    rows = torch.tensor([i for i, example in enumerate(options) for _ in example])  # (ΣK,)
    flat = [ids for example in options for ids in example]
    labels, mask = pad(flat, pad_id)  # (ΣK, Y)
    labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
    logits = scorer(rows, labels)  # (ΣK, Y, V)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    token = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (ΣK, Y)
    mean = (token * mask).sum(-1) / mask.sum(-1)  # (ΣK,) length-normalised
    return list(mean.split([len(example) for example in options]))


def rank_classify(scorer: Scorer, options: Sequence[Sequence[Sequence[int]]], pad_id: int) -> list[int]:
    """Index of the best option per example."""
    return [int(scores.argmax()) for scores in option_scores(scorer, options, pad_id)]


class RankAccuracy(MeanMetric):
    """Accuracy of rank classification: the share of examples whose best option is a correct one."""

    def update(self, chosen: Sequence[int], correct: Sequence[int | Sequence[int]]) -> None:  # type: ignore[override]
        hits = [float(c in (ok if isinstance(ok, Sequence) else [ok])) for c, ok in zip(chosen, correct)]
        super().update(torch.tensor(hits))


class RankedCount(Metric):
    """Rows ranked, summed over processes: an integer state, which no precision setting casts (a float
    count in bf16 stops at 256)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("rows", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, rows: int) -> None:  # type: ignore[override]
        self.rows += rows

    def compute(self) -> Tensor:
        return self.rows
