"""Batch samplers whose order is a function of (seed, epoch), so a killed run resumes mid-epoch.

`ResumableBatchSampler` is the contract: `batches_for(epoch)` is the epoch's order, and
`resume(epoch, position)` makes the next pass start at that batch. Lightning never calls
`set_epoch` on a batch sampler, so the epoch counts the sampler's own passes. The data modules
save (epoch, position) in checkpoints and call `resume` when Lightning restores them.

Under DDP each rank takes every world-size-th batch of the epoch (all ranks the same number), so
the CLI turns Lightning's sampler injection off (`trainer.use_distributed_sampler: false`): it
cannot re-instantiate a custom batch sampler.

`TaskBatchSampler` draws each batch from few tasks, so its instructions are encoded few times.
Per epoch: shuffle each task's examples, cut them into chunks of `batch_size // tasks_per_batch`,
shuffle the chunks, and join every `tasks_per_batch` consecutive chunks into a batch. Every
example appears exactly once per epoch and a batch holds at most `tasks_per_batch` tasks (fewer
rows when a task's last chunk is short).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]], ABC):
    def __init__(self, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.epoch, self._start = 0, 0
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas or (torch.distributed.get_world_size() if dist else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)

    @abstractmethod
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of the epoch, in order (all ranks compute the same list)."""

    def batches_for(self, epoch: int) -> list[list[int]]:
        """This rank's share of the epoch's batches (every rank gets the same number)."""
        batches = self.epoch_batches(epoch)
        per_rank = len(batches) // self.num_replicas
        return batches[self.rank::self.num_replicas][:per_rank]

    def resume(self, epoch: int, position: int) -> None:
        """The next pass is `epoch`, from its batch `position` on (batches before it were trained on)."""
        self.epoch, self._start = epoch, position

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches_for(self.epoch)  # runs at the first next(), like any generator
        start, self._start = self._start, 0
        self.epoch += 1
        yield from batches[start:]

    def __len__(self) -> int:
        return len(self.batches_for(0))


class ShuffledBatchSampler(ResumableBatchSampler):
    """`DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))`'s order, epoch by epoch.

    Per pass that generator gives the loader's base seed (one int64), then RandomSampler's
    permutation, then a second, empty-sliced one; replaying those draws makes any epoch's order
    reproducible without saving generator state.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, num_replicas: int | None = None, rank: int | None = None):
        super().__init__(num_replicas, rank)
        self.size, self.batch_size, self.seed = size, batch_size, seed

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch + 1):
            torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's base seed
            order = torch.randperm(self.size, generator=generator).tolist()
            torch.randperm(self.size, generator=generator)  # RandomSampler's empty tail
        return [order[i:i + self.batch_size] for i in range(0, self.size, self.batch_size)]

    def __len__(self) -> int:
        return -(-self.size // self.batch_size) // self.num_replicas


class TaskBatchSampler(ResumableBatchSampler):
    def __init__(self, task_of: Sequence[int], batch_size: int, tasks_per_batch: int,
                 shuffle: bool = True, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None):
        if not 1 <= tasks_per_batch <= batch_size:
            raise ValueError(f"need 1 <= tasks_per_batch <= batch_size, got {tasks_per_batch}, {batch_size}")
        super().__init__(num_replicas, rank)
        self.groups: dict[int, list[int]] = {}
        for i, task in enumerate(task_of):
            self.groups.setdefault(int(task), []).append(i)
        self.chunk = batch_size // tasks_per_batch
        self.tasks_per_batch, self.shuffle, self.seed = tasks_per_batch, shuffle, seed
        # The most rows in a batch, as torch's BatchSampler names it: DeepSpeed's config reads it.
        self.batch_size = self.chunk * tasks_per_batch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{epoch if self.shuffle else 0}")
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

    def __len__(self) -> int:
        n = sum(-(-len(g) // self.chunk) for g in self.groups.values())
        return -(-n // self.tasks_per_batch) // self.num_replicas


class ClusterStepSampler(Sampler[list[int]]):
    """The teacher stage's order: one cluster at a time, `batches_per_cluster` single-cluster batches each
    (its optimizer steps × gradient accumulation), clusters in `order`. One pass is the whole run.

    A cluster's batches come from its own stream, seeded by (seed, cluster name) alone: its examples
    (in dataset order) shuffled anew every pass over them, cut into batches of `batch_size` (a pass's
    last batch may be short). So a cluster sees the same batches whichever other clusters the run has.
    Under DDP each cluster's block is `batches_per_cluster × num_replicas` batches, rank r taking every
    num_replicas-th one, so every rank is on the same cluster at every step. Batches are made lazily:
    at real scale a run is ~10⁶ of them.
    """

    def __init__(self, cluster_of: Sequence[int], order: Sequence[tuple[int, str]], batches_per_cluster: int,
                 batch_size: int, seed: int = 0, num_replicas: int | None = None, rank: int | None = None):
        if batches_per_cluster < 1:
            raise ValueError(f"need at least one batch per cluster, got {batches_per_cluster}")
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas or (torch.distributed.get_world_size() if dist else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.members: dict[int, list[int]] = {cluster: [] for cluster, _ in order}
        for i, cluster in enumerate(cluster_of):
            if int(cluster) in self.members:
                self.members[int(cluster)].append(i)
        empty = [name for cluster, name in order if not self.members[cluster]]
        if empty:
            raise ValueError(f"clusters without a training example: {empty}")
        self.order, self.batches_per_cluster = list(order), batches_per_cluster
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self._start = 0, 0

    def stream(self, cluster: int, name: str) -> Iterator[list[int]]:
        """Cluster `cluster`'s batches, endlessly: its own seeded reshuffle every pass."""
        members, passes = self.members[cluster], 0
        while True:
            idx = list(members)
            random.Random(f"{self.seed}:{name}:{passes}").shuffle(idx)
            yield from (idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size))
            passes += 1

    def resume(self, epoch: int, position: int) -> None:
        """The next pass starts at this rank's batch `position` of pass `epoch` (a later pass is empty: the run is done)."""
        self.epoch, self._start = epoch, position

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        epoch, self.epoch = self.epoch, self.epoch + 1
        if epoch > 0:
            return
        block = self.batches_per_cluster * self.num_replicas  # this cluster's batches over all ranks
        for position, (cluster, name) in enumerate(self.order):
            first = max(0, start - position * self.batches_per_cluster)  # this rank's batches already trained on
            if first >= self.batches_per_cluster:
                continue
            batches = self.stream(cluster, name)
            for index in range(block):
                batch = next(batches)
                if index % self.num_replicas == self.rank and index // self.num_replicas >= first:
                    yield batch

    def __len__(self) -> int:
        return len(self.order) * self.batches_per_cluster
