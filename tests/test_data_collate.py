"""The collator (pad and stack only) and the few-tasks batch sampler."""

from collections import Counter

import pytest
import torch

from tagi.data.collate import IGNORE_INDEX, Collator, answer_by_group
from tagi.data.sampler import ShuffledBatchSampler, TaskBatchSampler

PAD = 0


def example(instr, inp, labels, **extra):
    return {"instruction": instr, "input": inp, "labels": labels, **extra}


def test_collator_contract_dedups_instructions():
    rows = [example([5, 6, 1], [7, 1], [8, 9, 1], concat=[5, 6, 7, 1], cluster_id=2),
            example([4, 1], [7, 7, 7, 1], [9, 1], concat=[4, 7, 7, 7, 1], cluster_id=0),
            example([5, 6, 1], [3, 1], [1], concat=[5, 6, 3, 1], cluster_id=2)]
    batch = Collator(PAD)(rows)
    assert set(batch) == {"instruction_ids", "instruction_mask", "task_index", "input_ids", "attention_mask",
                          "labels", "concat_input_ids", "concat_attention_mask", "cluster_ids"}
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["instruction_ids"].tolist() == [[5, 6, 1], [4, 1, PAD]]  # 2 distinct, first-seen order
    assert batch["instruction_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["task_index"].tolist() == [0, 1, 0]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 4)
    assert batch["input_ids"][0].tolist() == [7, 1, PAD, PAD] and batch["attention_mask"][0].tolist() == [1, 1, 0, 0]
    assert batch["labels"].tolist() == [[8, 9, 1], [9, 1, IGNORE_INDEX], [1, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["concat_input_ids"].shape == batch["concat_attention_mask"].shape == (3, 5)
    assert batch["cluster_ids"].tolist() == [2, 0, 2]
    for i, row in enumerate(rows):  # every row's instruction is recovered through task_index
        instr = batch["instruction_ids"][batch["task_index"][i]]
        assert instr[batch["instruction_mask"][batch["task_index"][i]].bool()].tolist() == row["instruction"]


def test_collator_passes_eval_metadata_and_teacher_rows():
    rows = [{"input": [3, 1], "labels": [4, 1], "cluster_id": 1, "task_name": "t", "category": "c",
             "instance_id": "t-0", "references": ["a", "b"]}]
    batch = Collator(PAD)(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "cluster_ids", "task_names", "categories",
                          "instance_ids", "references"}
    assert batch["references"] == [["a", "b"]] and batch["task_names"] == ["t"]


@pytest.mark.parametrize("batch_size,tasks_per_batch", [(8, 2), (6, 1), (5, 3)])
def test_task_batch_sampler(batch_size, tasks_per_batch):
    task_of = [t for t, n in enumerate([13, 1, 7, 20, 4]) for _ in range(n)]
    sampler = TaskBatchSampler(task_of, batch_size, tasks_per_batch, seed=0)
    epochs = [list(sampler) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == len(sampler)
        assert Counter(i for b in batches for i in b) == Counter(range(len(task_of)))  # each once per epoch
        assert all(len({task_of[i] for i in b}) <= tasks_per_batch and len(b) <= batch_size for b in batches)
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    assert list(TaskBatchSampler(task_of, batch_size, tasks_per_batch, seed=0)) == epochs[0]


def test_task_batch_sampler_shards_ranks():
    task_of = [t % 4 for t in range(40)]
    shards = [list(TaskBatchSampler(task_of, 4, 2, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    assert not {i for b in shards[0] for i in b} & {i for b in shards[1] for i in b}


def test_shuffled_batch_sampler_reproduces_dataloader_shuffle_per_epoch():
    """Same order as DataLoader(shuffle=True, generator=seeded), any epoch computed on its own."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(list(range(23)), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(7))
    expected = [[batch.tolist() for batch in loader] for _ in range(3)]
    sampler = ShuffledBatchSampler(23, 5, seed=7)
    assert [list(sampler) for _ in range(3)] == expected
    assert ShuffledBatchSampler(23, 5, seed=7).batches_for(2) == expected[2] and len(sampler) == 5


@pytest.mark.parametrize("make", [lambda: ShuffledBatchSampler(23, 5, seed=1),
                                  lambda: TaskBatchSampler([i % 3 for i in range(30)], 6, 2, seed=1)])
def test_resume_starts_mid_epoch_then_continues_with_the_next_epoch(make):
    uninterrupted = make()
    epochs = [list(uninterrupted) for _ in range(3)]
    resumed = make()
    resumed.resume(epoch=1, position=2)  # killed after 2 batches of the second epoch
    assert list(resumed) == epochs[1][2:]
    assert list(resumed) == epochs[2]


def test_answers_by_group_come_back_in_row_order():
    calls = []

    def answer(key, rows):  # one call per key, with that key's rows
        calls.append((key, rows.tolist()))
        return [f"{key}:{row}" for row in rows.tolist()]

    assert answer_by_group(torch.tensor([2, 0, 2, 1]), answer) == ["2:0", "0:1", "2:2", "1:3"]
    assert sorted(calls) == [(0, [1]), (1, [3]), (2, [0, 2])]
