"""The T5 every stage adapts: a hub id or local folder, or a small random T5 built in code (tests and
the offline demo, which have no pretrained model to download)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import T5Config, T5ForConditionalGeneration


def tiny_t5_config(vocab_size: int = 384, d_model: int = 64, num_layers: int = 2, num_heads: int = 4, **overrides: Any) -> T5Config:
    """A small random T5 for tests and the demo; `vocab_size` 384 fits `ByT5Tokenizer`."""
    values = dict(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=64,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # as t5-v1.1 / lm-adapt
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    values.update(overrides)
    return T5Config(**values)


def load_backbone(name_or_path: str = "tiny", tiny_config: dict | None = None, seed: int = 0) -> T5ForConditionalGeneration:
    """`"tiny"` → a random T5 built in code (seeded, offline); otherwise a hub id or local directory."""
    if name_or_path == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return T5ForConditionalGeneration(tiny_t5_config(**(tiny_config or {})))
    # from_pretrained returns eval mode; training stages expect train mode (dropout on real T5s).
    return T5ForConditionalGeneration.from_pretrained(name_or_path).train()
