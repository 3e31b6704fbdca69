"""Per-task reuse: a task's encoding (generated LoRA + encoded instruction) computed once, then reused.

Keyed by the instruction's token ids (the unpadded ones), so the same instruction text always maps
to the same entry whatever batch or padding it arrived in. Clear it whenever the weights change.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from torch import Tensor

from tagi.modeling.model import TaskEncoding

Encoder = Callable[[Tensor, Tensor], TaskEncoding]  # (ids (1, L), mask (1, L)) → encoding of 1 task


class TaskCache:
    def __init__(self, encode: Encoder, max_tasks: int = 1024):
        self.encode = encode
        self.max_tasks = max_tasks
        self.hits = self.misses = 0
        self._entries: OrderedDict[tuple[int, ...], TaskEncoding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ids: Tensor, mask: Tensor) -> TaskEncoding:
        """Encoding for one instruction: `ids`, `mask` of shape (L,)."""
        key = tuple(ids[mask.bool()].tolist())
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        keep = mask.bool()
        encoding = self.encode(ids[keep].unsqueeze(0), mask[keep].unsqueeze(0))
        self._entries[key] = encoding
        if len(self._entries) > self.max_tasks:  # least recently used goes first
            self._entries.popitem(last=False)
        return encoding

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0
