"""Collation: pad and stack token lists that the datasets already built. No model work here.

Example dict (any subset of)              →  batch keys
    instruction: list[int]                →  instruction_ids (U, Li), instruction_mask (U, Li),
                                             task_index (B,)   [U = distinct instructions in the batch]
    input: list[int]                      →  input_ids (B, Lx), attention_mask (B, Lx)
    labels: list[int]                     →  labels (B, Ly), padded with -100
    concat: list[int]                     →  concat_input_ids (B, Lc), concat_attention_mask (B, Lc)
    cluster_id: int                       →  cluster_ids (B,)
    task_name, category, instance_id, input_text, references, options  →  task_names, categories, instance_ids, inputs,
    references, options (per row: option token ids, or None)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

IGNORE_INDEX = -100  # label padding: ignored by cross-entropy
META_KEYS = {"task_name": "task_names", "category": "categories", "instance_id": "instance_ids",
             "input_text": "inputs", "references": "references", "options": "options"}


def pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest: ids (N, L) long, mask (N, L) long (1 = token)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def dedup(seqs: Sequence[Sequence[int]]) -> tuple[list[Sequence[int]], torch.Tensor]:
    """Distinct sequences in first-seen order, and for each row the index of its sequence (B,)."""
    index: dict[tuple[int, ...], int] = {}
    rows = [index.setdefault(tuple(s), len(index)) for s in seqs]
    return [list(k) for k in index], torch.tensor(rows, dtype=torch.long)


class Collator:
    """Pads whatever fields the examples have into the batch contract (module docstring)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict:
        first, batch = examples[0], {}
        if "instruction" in first:  # each distinct instruction is encoded once by the model
            unique, batch["task_index"] = dedup([ex["instruction"] for ex in examples])
            batch["instruction_ids"], batch["instruction_mask"] = pad(unique, self.pad_id)
        if "input" in first:
            batch["input_ids"], batch["attention_mask"] = pad([ex["input"] for ex in examples], self.pad_id)
        if "labels" in first:
            labels, mask = pad([ex["labels"] for ex in examples], self.pad_id)
            batch["labels"] = labels.masked_fill(mask == 0, IGNORE_INDEX)
        if "concat" in first:
            batch["concat_input_ids"], batch["concat_attention_mask"] = pad(
                [ex["concat"] for ex in examples], self.pad_id)
        if "cluster_id" in first:
            batch["cluster_ids"] = torch.tensor([ex["cluster_id"] for ex in examples], dtype=torch.long)
        for key, batch_key in META_KEYS.items():
            if key in first:
                batch[batch_key] = [ex[key] for ex in examples]
        return batch


def group_rows(keys: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """Rows of a batch grouped by an integer key (task index, cluster id): [(key, row indices)]."""
    return [(int(key), (keys == key).nonzero().squeeze(1)) for key in torch.unique(keys)]


def answer_by_group(keys: torch.Tensor, answer: Callable[[int, torch.Tensor], list[str]]) -> list[str]:
    """One text per row, in row order: `answer(key, rows)` runs once per group of rows sharing a key."""
    texts: list[str] = [""] * len(keys)
    for key, rows in group_rows(keys):
        for row, text in zip(rows.tolist(), answer(key, rows)):
            texts[row] = text
    return texts
