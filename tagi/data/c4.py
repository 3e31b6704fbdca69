"""C4-style documents for hypernetwork pretraining, split at random points into consecutive pieces.

    document tokens:  ... | a | b | c | ...           3-way (HINT):        a → H, b → model, predict c
                      ... | a | b | c | d | ...       4-way (HyperTuning): [a; d] → H, b → model, predict c

Each piece's length is drawn within its limit; `four_way_input_length` fixes b's (HyperTuning: 32 tokens),
`max_sequence_length` caps the tokens one segment covers (TAGI §A.2: 1024).

Sources: local `.jsonl`/`.json` (one object per line with a `text` field; `.gz` allowed) or `.txt`
(one document per non-empty line) files, a directory of them, or a glob; or `hf:<repo>[/<config>]`,
e.g. `hf:allenai/c4/en`, streamed with `datasets` when the user is online.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .prompts import PromptFormat
from .tokenization import encode

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".txt")


# -------------------------------------------------------------------------------------- documents
def local_files(source: str) -> list[Path]:
    """A file, a directory (its .jsonl/.json/.txt[.gz] files) or a glob, sorted."""
    path = Path(source)
    if path.is_file():
        return [path]
    candidates = sorted(path.rglob("*")) if path.is_dir() else sorted(map(Path, glob.glob(source)))
    files = [p for p in candidates if p.is_file() and p.name.removesuffix(".gz").endswith(LOCAL_SUFFIXES)]
    if not files:
        raise FileNotFoundError(f"{source}: no {'/'.join(LOCAL_SUFFIXES)} files found "
                                "(give a file, a directory, a glob, or hf:<repo>/<config>)")
    return files


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _iter_file(path: Path) -> Iterator[str]:
    is_json = path.name.removesuffix(".gz").endswith((".jsonl", ".json"))
    with _open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if not is_json:
                yield line.strip()
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{lineno}: field 'text' is missing or not a string "
                                 "(each JSONL line must be an object with a 'text' field)")
            yield row["text"]


def _iter_hub(spec: str, split: str) -> Iterator[str]:
    """`allenai/c4/en` → load_dataset("allenai/c4", "en", streaming=True); needs the network."""
    from datasets import load_dataset  # imported here: only the online path needs it

    parts = spec.split("/")
    repo, config = ("/".join(parts[:2]), "/".join(parts[2:]) or None) if len(parts) > 1 else (spec, None)
    for row in load_dataset(repo, config, split=split, streaming=True):
        yield row["text"]


def iter_documents(source: str, split: str = "train") -> Iterator[str]:
    """Document texts from local files (see `local_files`) or `hf:<repo>[/<config>]` streaming."""
    if source.startswith("hf:"):
        yield from _iter_hub(source.removeprefix("hf:"), split)
        return
    for path in local_files(source):
        yield from _iter_file(path)


# -------------------------------------------------------------------------------------- splitting
def split_pieces(ids: Sequence[int], rng: random.Random, max_lens: Sequence[int],
                 min_piece: int | Sequence[int] = 1) -> list[list[int]] | None:
    """Cut a prefix of `ids` into len(max_lens) consecutive pieces at random points.

    Piece i has between `min_piece` (or `min_piece[i]`) and `max_lens[i]` tokens; a piece whose
    minimum equals its maximum has a fixed length. With enough tokens each length is uniform in its
    range; a shorter sequence is covered exactly (random cuts within the bounds).
    Returns None when `ids` is shorter than the sum of the minimums.
    """
    mins = [min_piece] * len(max_lens) if isinstance(min_piece, int) else list(min_piece)
    if len(mins) != len(max_lens) or any(m < 1 for m in mins) or any(hi < lo for lo, hi in zip(mins, max_lens)):
        raise ValueError(f"need 1 <= min_piece <= every max length, got {min_piece=} {max_lens=}")
    if len(ids) < sum(mins):
        return None
    if len(ids) >= sum(max_lens):
        lengths = [rng.randint(lo, hi) for lo, hi in zip(mins, max_lens)]
    else:
        lengths = _exact_lengths(len(ids), rng, max_lens, mins)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return [list(ids[s:s + n]) for s, n in zip(starts, lengths)]


def _exact_lengths(total: int, rng: random.Random, max_lens: Sequence[int], mins: Sequence[int]) -> list[int]:
    """Random piece lengths within [mins[i], max_lens[i]] that sum to `total`, drawn first to last."""
    lengths = []
    for i, max_len in enumerate(max_lens[:-1]):
        later, later_mins = max_lens[i + 1:], mins[i + 1:]
        # leave the later pieces their minimum, and give them no more than they can hold
        low = max(mins[i], total - sum(later))
        n = rng.randint(low, min(max_len, total - sum(later_mins)))
        lengths.append(n)
        total -= n
    return lengths + [total]


def split_three_way(ids: Sequence[int], rng: random.Random, max_a: int, max_b: int, max_c: int,
                    min_piece: int = 1) -> tuple[list[int], list[int], list[int]] | None:
    """HINT's split: (a, b, c), consecutive; a → hypernetwork, b → model input, c → target."""
    pieces = split_pieces(ids, rng, (max_a, max_b, max_c), min_piece)
    return None if pieces is None else tuple(pieces)


def split_four_way(ids: Sequence[int], rng: random.Random, max_a: int, max_b: int, max_c: int,
                   max_d: int, min_piece: int = 1) -> tuple[list[int], ...] | None:
    """HyperTuning's split: (a, b, c, d), consecutive; [a; d] → hypernetwork, b → model, predict c."""
    pieces = split_pieces(ids, rng, (max_a, max_b, max_c, max_d), min_piece)
    return None if pieces is None else tuple(pieces)


# ---------------------------------------------------------------------------------------- dataset
def _shard() -> tuple[int, int]:
    """(index, count) of this reader across DDP ranks x dataloader workers."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
    return rank * workers + worker, world * workers


class C4Segments(IterableDataset):
    """Yields `{"instruction", "input", "labels"}` token lists from documents: the instruction and labels end
    in EOS, the input is in the prompt format (`prompts.py`; plain: + EOS).

    Documents `[skip_documents, skip_documents + max_documents)` are tokenised and cut, start to
    end, into consecutive segments split at random points (`split_pieces`). The random
    state is derived from (seed, pass, document index), so the segments do not depend on the
    number of workers. `num_segments` fixes the epoch length (cycling over the documents);
    None means one pass. `four_way_input_length`: b's length in the 4-way split (None: drawn like
    the others). `max_sequence_length`: at most this many document tokens per segment (None: the
    sum of the pieces' limits).
    """

    def __init__(self, source: str, tokenizer, max_instruction_length: int = 256,
                 max_input_length: int = 256, max_target_length: int = 128, four_way: bool = False,
                 min_piece: int = 8, seed: int = 0, num_segments: int | None = None,
                 max_documents: int | None = None, skip_documents: int = 0, split: str = "train",
                 four_way_input_length: int | None = None, max_sequence_length: int | None = None,
                 prompt_format: PromptFormat | None = None):
        super().__init__()
        self.source, self.tokenizer, self.four_way, self.split = source, tokenizer, four_way, split
        self.eos = tokenizer.eos_token_id
        self.format = prompt_format or PromptFormat.of(tokenizer)  # b is the model's prompt, as a task input is
        self.min_piece, self.seed, self.num_segments = min_piece, seed, num_segments
        self.max_documents, self.skip_documents = max_documents, skip_documents
        max_a, max_b, max_c = max_instruction_length - 1, self.format.content_budget(max_input_length), max_target_length - 1
        # 4-way: a and d share the instruction budget, so [a; d] + EOS fits max_instruction_length
        self.max_lens = (max_a // 2, max_b, max_c, max_a - max_a // 2) if four_way else (max_a, max_b, max_c)
        self.min_lens = [min_piece] * len(self.max_lens)
        if four_way_input_length is not None:
            self._fix_input_length(four_way_input_length)
        self.window = self._window(max_sequence_length)

    def _fix_input_length(self, length: int) -> None:
        """HyperTuning §4.2: segment b is "very short (32 tokens)", so the model must lean on [a; d] to predict c."""
        if not self.four_way:
            raise ValueError(f"four_way_input_length: {length}; it fixes b of the 4-way split, so it needs four_way: true")
        if not self.min_piece <= length <= self.max_lens[1]:
            raise ValueError(f"four_way_input_length: {length}; it must be between min_piece ({self.min_piece}) and "
                             f"max_input_length less the prompt format's tokens ({self.max_lens[1]})")
        self.max_lens = (self.max_lens[0], length, *self.max_lens[2:])
        self.min_lens[1] = length

    def _window(self, max_sequence_length: int | None) -> int:
        """Document tokens one segment covers: all the pieces' limits, or fewer (TAGI §A.2: each C4 sequence
        truncated to 1024 tokens, then split), in which case every long-enough segment covers exactly that many."""
        limits = sum(self.max_lens)
        if max_sequence_length is None:
            return limits
        if max_sequence_length < sum(self.min_lens):
            raise ValueError(f"max_sequence_length: {max_sequence_length}; the pieces need at least "
                             f"{sum(self.min_lens)} tokens (min_piece each)")
        return min(limits, max_sequence_length)

    def _documents(self) -> Iterator[tuple[int, str]]:
        stop = None if self.max_documents is None else self.skip_documents + self.max_documents
        for i, text in enumerate(iter_documents(self.source, self.split)):
            if stop is not None and i >= stop:
                return
            if i >= self.skip_documents and text.strip():
                yield i, text

    def _segments(self, doc_index: int, text: str, epoch: int) -> Iterator[dict]:
        rng = random.Random(f"{self.seed}:{epoch}:{doc_index}")
        ids = encode(self.tokenizer, [text])[0]
        start, window = 0, self.window
        while (pieces := split_pieces(ids[start:start + window], rng, self.max_lens, self.min_lens)):
            start += sum(map(len, pieces))  # the next segment continues where this one ended
            instruction = pieces[0] + pieces[3] if self.four_way else pieces[0]
            yield {"instruction": instruction + [self.eos], "input": self.format.wrap(pieces[1]),
                   "labels": pieces[2] + [self.format.answer_end]}

    def __iter__(self) -> Iterator[dict]:
        shard, shards = _shard()
        budget = None if self.num_segments is None else len(range(shard, self.num_segments, shards))
        epoch = 0
        while budget is None or budget > 0:
            produced = 0
            for doc_index, text in self._documents():
                if doc_index % shards != shard:
                    continue
                for segment in self._segments(doc_index, text, epoch):
                    yield segment
                    produced += 1
                    if budget is not None and produced >= budget:
                        return
            if budget is None:
                return
            if produced == 0:
                raise ValueError(f"{self.source}: no document long enough for a segment "
                                 f"(need >= {sum(self.min_lens)} tokens)")
            budget -= produced
            epoch += 1  # cycle: the next pass splits the same documents at new points
