"""One evaluation pass (the validation tasks while fitting, the test tasks in `test`): generated texts
scored with ROUGE-L and exact match per task, per category and overall, the rows that carry answer
options (multiple-choice instances) also scored by rank classification, and, for a student on the
test tasks, its inference cost against instruction concatenation.

A stage owns one `Evaluation` per pass and feeds it each batch's texts and a scorer of its options;
how the texts and logits are computed is the stage's business. Lightning-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tagi.data.tokenization import pad_id
from tagi.eval.metrics import InstructionMetrics
from tagi.eval.rank import RankAccuracy, RankedCount, rank_classify

if TYPE_CHECKING:
    from tagi.eval.cost import CostTally

OptionLogits = Callable[[Tensor, Tensor], Tensor]  # (batch rows (R,), labels (R, Y)) → logits (R, Y, V)


class Evaluation(nn.Module):
    """A module so that its metrics follow the stage to its device and sync across processes (the cost
    tally is this process's own)."""

    def __init__(self, tasks: Sequence[tuple[str, str]], tokenizer, cost: CostTally | None = None):
        """`cost`: a student's inference-cost tally, fed the batches that carry the concatenated inputs and
        kept after `compute` (results.json reports it)."""
        super().__init__()
        self.metrics = InstructionMetrics(tasks)
        self.rank_accuracy = RankAccuracy()
        # Summed over processes: under DDP every process must agree whether to compute (and sync) the accuracy.
        self.ranked = RankedCount()
        self.tokenizer = tokenizer
        self.cost = cost

    @property
    def task_category(self) -> dict[str, str]:
        return self.metrics.task_category

    def update(self, batch: dict, texts: list[str], option_logits: OptionLogits) -> None:
        self.metrics.update(texts, batch["references"], batch["task_names"])
        rows = [i for i, options in enumerate(batch.get("options") or []) if options]
        self.ranked.update(len(rows))
        if rows:
            self._rank(batch, rows, option_logits)
        if self.cost is not None and "concat_input_ids" in batch:
            self.cost.add_batch(batch)

    def _rank(self, batch: dict, rows: list[int], option_logits: OptionLogits) -> None:
        """The best-scoring option of each row, right when it is one its references contain."""
        index = torch.tensor(rows)
        chosen = rank_classify(lambda option_rows, labels: option_logits(index[option_rows], labels),
                               [batch["options"][i] for i in rows], pad_id(self.tokenizer))
        correct = [[k for k, text in enumerate(self.tokenizer.batch_decode(batch["options"][i], skip_special_tokens=True))
                    if text in batch["references"][i]] for i in rows]
        self.rank_accuracy.update(chosen, correct)

    def compute(self) -> dict[str, float]:
        """The pass's scores (`rougeL`, `exact_match`, `count`, per task and category; `rank_accuracy` and
        `rank_count` when rows were ranked), then reset for the next pass."""
        scores = {key: float(value) for key, value in self.metrics.compute().items()}
        ranked = int(self.ranked.compute())
        if ranked:
            scores["rank_accuracy"], scores["rank_count"] = 100 * float(self.rank_accuracy.compute()), float(ranked)
        for metric in (self.metrics, self.rank_accuracy, self.ranked):
            metric.reset()
        return scores
