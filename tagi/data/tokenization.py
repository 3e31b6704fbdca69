"""One tokenizer loader shared by the data and the model side, so both agree on the vocabulary."""

from __future__ import annotations

from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerBase


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """`"byt5"` → a byte-level ByT5 tokenizer (needs no files: tests, demo); else a local path or hub id."""
    if name == "byt5":
        return ByT5Tokenizer()
    return AutoTokenizer.from_pretrained(name)


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens (callers add EOS after truncating, so EOS is never cut off)."""
    if not texts:
        return []
    # verbose=False: long documents are expected here, truncation happens later and is counted.
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
