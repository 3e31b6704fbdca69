"""The model every stage adapts: a hub id or local folder (a T5, or a Llama-family causal LM such as
SmolLM2), or a small random model built in code (tests and the offline demo, which have no pretrained
model to download): "tiny" is a T5, "tiny-llama" a Llama with grouped-query attention."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel, T5Config, T5ForConditionalGeneration

TINY_T5, TINY_LLAMA = "tiny", "tiny-llama"


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


def tiny_llama_config(vocab_size: int = 384, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                      num_kv_heads: int = 2, **overrides: Any) -> LlamaConfig:
    """A small random Llama (SmolLM2's architecture) for tests: grouped-query attention, so v_proj's output
    (kv heads · head dim) is narrower than q_proj's, as in SmolLM2 (192 against 576). Token ids as ByT5's."""
    values = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,  # as SmolLM2
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    values.update(overrides)
    return LlamaConfig(**values)


TINY = {TINY_T5: (tiny_t5_config, T5ForConditionalGeneration), TINY_LLAMA: (tiny_llama_config, LlamaForCausalLM)}


def load_backbone(name_or_path: str = TINY_T5, tiny_config: dict | None = None, seed: int = 0) -> PreTrainedModel:
    """`"tiny"` / `"tiny-llama"` → a random model built in code (seeded, offline); otherwise a hub id or local
    directory, a T5 or a causal LM as its config says."""
    if name_or_path in TINY:
        make_config, model_class = TINY[name_or_path]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return model_class(make_config(**(tiny_config or {})))
    causal = not AutoConfig.from_pretrained(name_or_path).is_encoder_decoder
    model_class = AutoModelForCausalLM if causal else T5ForConditionalGeneration
    # from_pretrained returns eval mode; training stages expect train mode (dropout on real T5s).
    return model_class.from_pretrained(name_or_path).train()
