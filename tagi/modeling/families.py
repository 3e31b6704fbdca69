"""What differs between backbone families, behind one interface; the rest of the package calls only this.

    family = family_of(backbone)                      chosen from the model's config
    family.site_names()                               the LoRA sites, peft's `target_modules` naming
    family.site_layout(names)                         where each site sits (stack, layer, q/v)
    family.encode_instruction(ids, mask)              (N, L, d): the frozen backbone's states of an instruction
    family.answer_logits(call, ids, mask, labels)     .logits (B, Ly, V) aligned with `labels`, .loss (CE)
    family.generate(ids, mask, **kwargs)              (B, new) the answer tokens only

Both families read the same batch: a prompt (`input_ids`, right-padded) and an answer (`labels`, -100
padded). A T5 encodes the prompt and decodes the answer. A causal LM reads one sequence, the prompt
left-padded so that every row's answer starts at one column P, then the answer:

    [pad pad p p p p | a a a pad]      logits kept at columns P-1 .. P+Ly-2 predict a_0 .. a_{Ly-1}

so its logits line up with the labels as a T5's do, whatever the prompt's length: the KL between a
student (input alone) and a teacher (instruction + input) compares the same answer tokens.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagi.modeling.hypernet import SiteLayout
from tagi.modeling.lora import lora_site_names

IGNORE_INDEX = -100
Call = Callable[..., Any]  # the backbone's forward, or θ0's (`TAGIModel.theta0_backbone`)


@dataclass
class AnswerOutput:
    """A causal LM's answer logits and CE, in the fields a T5's `Seq2SeqLMOutput` has."""

    logits: Tensor  # (B, Ly, V)
    loss: Tensor | None


class BackboneFamily(ABC):
    """One model family's LoRA sites, instruction encoding, forward and generation."""

    targets: tuple[str, ...]  # peft target_modules
    peft_task_type: str
    reads_instruction_states: bool  # has an encoder whose states fusion / FiD can read

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    @abstractmethod
    def accepts(cls, config: Any) -> bool:
        """Whether this family runs a model with this config."""

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def site_names(self) -> list[str]:
        return lora_site_names(self.model, self.targets)

    @abstractmethod
    def site_layout(self, names: Sequence[str]) -> SiteLayout:
        """Stack, layer and q/v of each site."""

    @abstractmethod
    def is_norm(self, module: nn.Module) -> bool:
        """A layer norm of the backbone (`train_layer_norms`)."""

    @abstractmethod
    def encode_instruction(self, ids: Tensor, mask: Tensor) -> Tensor:
        """(N, L) ids → (N, L, d) states of the plain backbone (call outside any LoRA)."""

    @abstractmethod
    def answer_logits(self, call: Call, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None, **kwargs: Any) -> Any:
        """`.logits` (B, Ly, V) of every answer position and `.loss`, mean CE over the labelled tokens. `call` runs
        the backbone (its forward, or θ0's); `kwargs` go to it (a T5's `decoder_input_ids` in tests)."""

    @abstractmethod
    def generate(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Tensor:
        """Greedy/beam answers (B, new): the answer tokens only, or (T5) after a decoder start token."""


class T5Family(BackboneFamily):
    """T5 (v1.0, v1.1, lm-adapt, Flan): LoRA on every attention's q and v, the encoder reads the instruction."""

    targets = ("q", "v")
    peft_task_type = "SEQ_2_SEQ_LM"
    reads_instruction_states = True
    _SITE = re.compile(r"(?:^|\.)(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.(SelfAttention|EncDecAttention)\.(q|v)$")

    @classmethod
    def accepts(cls, config: Any) -> bool:
        return getattr(config, "model_type", None) in ("t5", "mt5")

    @property
    def hidden_size(self) -> int:
        return self.model.config.d_model

    def site_layout(self, names: Sequence[str]) -> SiteLayout:
        parsed = []
        for name in names:
            match = self._SITE.search(name)
            if match is None:
                raise ValueError(f"LoRA site {name!r} is not a T5 attention q/v projection "
                                 "(expected '<encoder|decoder>.block.<i>.layer.<j>.<SelfAttention|EncDecAttention>.<q|v>')")
            part, block, attention, kind = match.groups()
            stack = 0 if part == "encoder" else 1 if attention == "SelfAttention" else 2
            parsed.append((stack, int(block), int(kind == "v"), part))
        encoder_blocks = 1 + max((block for _, block, _, part in parsed if part == "encoder"), default=-1)
        steps = tuple(block + (encoder_blocks if part == "decoder" else 0) for _, block, _, part in parsed)
        stack, layer, kind, _ = zip(*parsed)
        return SiteLayout(stack, layer, kind, steps)

    def is_norm(self, module: nn.Module) -> bool:
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        return isinstance(module, T5LayerNorm)

    def encode_instruction(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state

    def answer_logits(self, call: Call, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None, **kwargs: Any) -> Any:
        return call(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    def generate(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Tensor:
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


class CausalLMFamily(BackboneFamily):
    """Llama-family decoder-only models (Llama, Qwen2, Mistral, SmolLM): LoRA on every layer's q_proj and
    v_proj; the instruction is read by the frozen model itself (its last hidden states)."""

    targets = ("q_proj", "v_proj")
    peft_task_type = "CAUSAL_LM"
    reads_instruction_states = False
    MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2")
    _SITE = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(q_proj|v_proj)$")

    @classmethod
    def accepts(cls, config: Any) -> bool:
        return getattr(config, "model_type", None) in cls.MODEL_TYPES

    def site_layout(self, names: Sequence[str]) -> SiteLayout:
        parsed = []
        for name in names:
            match = self._SITE.search(name)
            if match is None:
                raise ValueError(f"LoRA site {name!r} is not a decoder layer's q/v projection "
                                 "(expected 'model.layers.<i>.self_attn.<q_proj|v_proj>')")
            parsed.append((int(match.group(1)), int(match.group(2) == "v_proj")))
        layer, kind = zip(*parsed)
        # A decoder-only model's attention is decoder self-attention (T5's stack 1): one stack, one step per layer.
        return SiteLayout(tuple(1 for _ in parsed), layer, kind, layer)

    def is_norm(self, module: nn.Module) -> bool:
        return type(module).__name__.endswith("RMSNorm")

    def encode_instruction(self, ids: Tensor, mask: Tensor) -> Tensor:
        # Right padding: a causal model's state at t reads tokens <= t only, so padding changes no real state.
        return self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, L, d)

    def answer_logits(self, call: Call, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None, **kwargs: Any) -> AnswerOutput:
        if labels is None or kwargs:
            raise TypeError(f"a causal LM's answer logits need labels (the answer tokens) and no other arguments; got {sorted(kwargs)}")
        prompt, prompt_mask = left_aligned(input_ids, attention_mask)  # (B, P)
        answer_mask = (labels != IGNORE_INDEX).to(prompt_mask.dtype)  # (B, Ly)
        ids = torch.cat([prompt, labels.clamp(min=0)], 1)  # (B, P + Ly)
        mask = torch.cat([prompt_mask, answer_mask], 1)
        width = prompt.shape[1]
        keep = torch.arange(width - 1, width - 1 + labels.shape[1], device=ids.device)  # (Ly,) columns predicting the answer
        logits = call(input_ids=ids, attention_mask=mask, position_ids=positions(mask), logits_to_keep=keep,
                      use_cache=False).logits  # (B, Ly, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return AnswerOutput(logits, loss)

    def generate(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Tensor:
        prompt, prompt_mask = left_aligned(input_ids, attention_mask)  # (B, P)
        config = self.model.generation_config
        # a caller's `eos_token_id` (the prompt format's answer end) stops generation besides the model's own
        stops = list(dict.fromkeys([*_token_list(kwargs.get("eos_token_id")), *_token_list(config.eos_token_id)]))
        kwargs["eos_token_id"] = stops or None  # Llama 3: several of its own
        kwargs.setdefault("pad_token_id", config.pad_token_id if config.pad_token_id is not None else next(iter(stops), None))
        sequences = self.model.generate(input_ids=prompt, attention_mask=prompt_mask, **kwargs)  # (B, P + new)
        return sequences[:, prompt.shape[1]:]


def _token_list(ids: int | list[int] | None) -> list[int]:
    return [] if ids is None else list(ids) if isinstance(ids, (list, tuple)) else [ids]


def left_aligned(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows moved so their tokens end at the last column (left padding), whatever side they were padded on:
    (B, L), (B, L) → (B, L), (B, L). A stable sort of the mask puts each row's padding first, order kept."""
    order = torch.sort(mask, dim=1, stable=True).indices  # (B, L)
    return ids.gather(1, order), mask.gather(1, order)


def positions(mask: Tensor) -> Tensor:
    """Position ids that count real tokens only (left padding gets 0): what `generate` gives a padded row."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


FAMILIES: tuple[type[BackboneFamily], ...] = (T5Family, CausalLMFamily)


def family_of(model: nn.Module) -> BackboneFamily:
    """The family that runs `model`, chosen from its config; a ValueError naming the model type otherwise."""
    for family in FAMILIES:
        if family.accepts(model.config):
            return family(model)
    supported = ", ".join(["t5", "mt5", *CausalLMFamily.MODEL_TYPES])
    raise ValueError(f"backbone model_type {getattr(model.config, 'model_type', None)!r} is not supported "
                     f"(supported: {supported})")
