"""One tokenizer loader shared by the data and the model side, so both agree on the vocabulary."""

from __future__ import annotations

import string
from functools import lru_cache
from typing import Callable

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


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id padding is written with; masks, not ids, say what is padding, so a tokenizer without a pad token
    (Llama 3's, Mistral's) pads with its end of sequence."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    return eos[0] if isinstance(eos, list) else eos


def fit_text(tokenizer: PreTrainedTokenizerBase, render: Callable[[int, str], str], pieces: list[str],
             budget: int) -> tuple[list[str], list[list[int]], list[bool]]:
    """Each `render(i, pieces[i])` tokenised whole in at most `budget` tokens: (the pieces as used, the ids,
    which were cut). Where a text is too long, its piece is cut at its end, in whole tokens, and the text is
    tokenised again whole. So what `render` puts around a piece (a template's "Output:" cue, the instance
    after an instruction) is kept, and the ids are the text's own tokenisation, the same a server gets from
    `tokenizer(text)`; joining separately tokenised parts is not (SmolLM2 merges "\\n\\n" one way across a
    join and another way inside a text). A text still too long when nothing of its piece is left is cut at
    its end."""
    ids = encode(tokenizer, [render(i, piece) for i, piece in enumerate(pieces)])
    cut = [len(tokens) > budget for tokens in ids]
    over = [i for i, long in enumerate(cut) if long]
    pieces = list(pieces)
    distinct = list(dict.fromkeys(pieces[i] for i in over))  # an instruction recurs in every row of its task
    piece_ids = dict(zip(distinct, encode(tokenizer, distinct)))
    original = {i: piece_ids[pieces[i]] for i in over}
    keep = {i: max(len(original[i]) - (len(ids[i]) - budget), 0) for i in over}
    while over:  # each round a row fits, or keeps fewer tokens than before, down to an empty piece
        for i in over:
            pieces[i] = _decoded_prefix(tokenizer, original[i][:keep[i]])
        for i, tokens in zip(over, encode(tokenizer, [render(i, pieces[i]) for i in over])):
            ids[i] = tokens
        over = [i for i in over if len(ids[i]) > budget and keep[i] > 0]
        for i in over:  # a cut can change how the joins tokenise: shrink by what is still over
            keep[i] = max(keep[i] - (len(ids[i]) - budget), 0)
    ids = [tokens[:budget] for tokens in ids]  # the text around an empty piece is itself too long
    return pieces, ids, cut


def _decoded_prefix(tokenizer: PreTrainedTokenizerBase, tokens: list[int]) -> str:
    """The text of a piece's first tokens. A byte-level vocabulary can cut a character in two, which decodes as
    U+FFFD: dropped, so neither prompt reads a character the input never had."""
    return tokenizer.decode(tokens, clean_up_tokenization_spaces=False).rstrip("\ufffd")
