"""A batch sampler that draws each batch from few tasks, so its instructions are encoded few times.

Per epoch: shuffle each task's examples, cut them into chunks of `batch_size // tasks_per_batch`,
shuffle the chunks, and join every `tasks_per_batch` consecutive chunks into a batch. Every
example appears exactly once per epoch and a batch holds at most `tasks_per_batch` tasks (fewer
rows when a task's last chunk is short).

Lightning cannot re-instantiate a custom batch sampler for distributed training; under DDP set
`Trainer(use_distributed_sampler=False)` -- this sampler already gives each rank its own share.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class TaskBatchSampler(Sampler[list[int]]):
    def __init__(self, task_of: Sequence[int], batch_size: int, tasks_per_batch: int,
                 shuffle: bool = True, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None):
        if not 1 <= tasks_per_batch <= batch_size:
            raise ValueError(f"need 1 <= tasks_per_batch <= batch_size, got {tasks_per_batch}, {batch_size}")
        self.groups: dict[int, list[int]] = {}
        for i, task in enumerate(task_of):
            self.groups.setdefault(int(task), []).append(i)
        self.chunk = batch_size // tasks_per_batch
        self.tasks_per_batch, self.shuffle, self.seed, self.epoch = tasks_per_batch, shuffle, seed, 0
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas or (torch.distributed.get_world_size() if dist else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        chunks = []
        for task in sorted(self.groups):
            idx = list(self.groups[task])
            if self.shuffle:
                rng.shuffle(idx)
            chunks += [idx[i:i + self.chunk] for i in range(0, len(idx), self.chunk)]
        if self.shuffle:
            rng.shuffle(chunks)
        k = self.tasks_per_batch
        return [sum(chunks[i:i + k], []) for i in range(0, len(chunks), k)]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        if self.shuffle:
            self.epoch += 1  # a fresh order next epoch even when nobody calls set_epoch
        per_rank = len(batches) // self.num_replicas if self.num_replicas > 1 else len(batches)
        yield from batches[self.rank::self.num_replicas][:per_rank]

    def __len__(self) -> int:
        n = sum(-(-len(g) // self.chunk) for g in self.groups.values())
        batches = -(-n // self.tasks_per_batch)
        return batches // self.num_replicas if self.num_replicas > 1 else batches
