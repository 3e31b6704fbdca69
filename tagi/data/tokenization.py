"""One tokenizer loader shared by the data and the model side, so both agree on the vocabulary."""

from __future__ import annotations

import string
from functools import lru_cache

from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tagi.errors import InputError

SYNTHETIC_TOKENIZER = "synthetic"


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """`"byt5"` → byte-level ByT5 (no files: tests); `"synthetic"` → the demo suite's subword
    vocabulary, built in memory (no files: demo); else a local path or hub id."""
    if name == "byt5":
        return ByT5Tokenizer()
    if name == SYNTHETIC_TOKENIZER:
        return synthetic_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:  # not a folder with a tokenizer, nor a reachable hub id
        raise InputError(f"data.init_args.tokenizer: {name!r} is not a tokenizer ({str(error).splitlines()[0][:160]}); give "
                         "`byt5`, `synthetic`, a folder holding a saved tokenizer (e.g. a θ0 folder stage 0 wrote), or a "
                         "hub id already in the local cache") from None


@lru_cache(maxsize=1)
def synthetic_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A T5-style (Metaspace BPE, <pad>=0, </s>=1, <unk>=2) tokenizer trained on the synthetic suite's
    TRAIN tasks in under a second, deterministically.

    Why not ByT5 for the demo: byte-level sequences are 4-5x longer, and a tiny T5 on 2 CPU cores
    cannot learn the suite from bytes within the demo's minutes. Every printable ASCII character
    is in the alphabet, so held-out text (mirrored words, capitals) still encodes without <unk>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from .synthetic import train_texts

    model = Tokenizer(models.BPE(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    alphabet = [c for c in string.printable if not c.isspace()] + ["\n"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=alphabet, show_progress=False)
    model.train_from_iterator(train_texts() + [_TEMPLATE_WORDS] * 100, trainer)
    # `tokenizer(text)` ends a text with </s> as T5's tokenizer does, so code that serves an adapter the usual way
    # (the README's peft snippet) feeds what training fed (`encode` + EOS, `tagi.data.prompts`).
    model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


# The fixed words of the prompt templates (tagi.data.templates), so they become whole tokens.
_TEMPLATE_WORDS = "Definition: Positive Example 1 -\nInput: Output:\n\nPositive Example 2 - Now complete the following example -"


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens (callers add EOS after truncating, so EOS is never cut off)."""
    if not texts:
        return []
    # verbose=False: long documents are expected here, truncation happens later and is counted.
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
