"""The hypernetwork: an encoded instruction → LoRA factors for every q/v site of the backbone.

One generator serves every site (docs/ARCHITECTURE.md, "The method"): what tells the sites apart is a learned embedding of
(stack, layer, q/v), not separate weights, so its size does not grow with the number of layers.

    I (N, L, d), mask ─► context per backbone layer      c (N, T, P)      T = encoder + decoder blocks
        mlp:  pooler ─► tanh(W · masked_mean(I))  (N, P), the same for every layer
        hart: a small transformer decoder run T steps; step t attends to steps < t and
              cross-attends to I (HART §3.1)              (N, T, P)
    site s ─► e_s = E_stack[stack_s] + E_layer[layer_s] + E_kind[q|v]            (S, E)
    shared head:  h = LayerNorm(GELU(W_c c[layer of s] + W_e e_s + b))            (N, S, H)
                  A = h W_A + b_A ─► (N, S, r, in)     B = h W_B + b_B ─► (N, S, out, r)
                  (sites narrower than the widest keep their own block, the rest is zeroed: `LoRAWeights`)

The instruction encoder is the backbone itself (a T5's encoder, a causal LM's hidden states; owned by
the model, see `model.py` and `families.py`), so this module only pools and generates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from tagi.modeling.lora import site_masks

GeneratorKind = Literal["mlp", "hart"]
STACKS = ("encoder self-attention", "decoder self-attention", "decoder cross-attention")


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean over the unmasked positions: (N, L, d), (N, L) → (N, d)."""
    weights = mask.to(states.dtype).unsqueeze(-1)  # (N, L, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@dataclass(frozen=True)
class SiteLayout:
    """Where each LoRA site sits in the backbone, one entry per site (in `lora_site_names` order); each
    backbone family reads it from the site names (`BackboneFamily.site_layout`)."""

    stack: tuple[int, ...]  # index into STACKS (a decoder-only model's layers are decoder self-attention)
    layer: tuple[int, ...]  # block index within its encoder or decoder
    kind: tuple[int, ...]  # 0: q, 1: v
    step: tuple[int, ...]  # backbone layer in generation order: encoder blocks, then decoder blocks

    @property
    def num_sites(self) -> int:
        return len(self.stack)

    @property
    def num_steps(self) -> int:
        return 1 + max(self.step)


class Pooler(nn.Module):
    """Trainable pooling of the encoded instruction: tanh(W · masked mean) — the official code's pooler."""

    def __init__(self, instruction_dim: int, width: int):
        super().__init__()
        self.project = nn.Linear(instruction_dim, width)

    def forward(self, instruction: Tensor, mask: Tensor) -> Tensor:
        return torch.tanh(self.project(masked_mean(instruction, mask)))  # (N, d) → (N, P)


class LayerStates(nn.Module):
    """HART's autoregressive decoder: one state per backbone layer, each from the states before it.

    Step 1 reads a learned start token, step t the states of steps < t (causal self-attention), and
    every step cross-attends to the instruction. Positions are learned, so step t knows its layer.
    Run step by step, because each step's input is the previous step's output (T is ~2·blocks).
    """

    def __init__(self, instruction_dim: int, width: int, steps: int, num_layers: int = 1, num_heads: int = 4):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"generator width {width} is not divisible by hart_heads {num_heads}")
        self.steps = steps
        self.memory = nn.Linear(instruction_dim, width)
        self.start = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.position = nn.Embedding(steps, width)
        layer = nn.TransformerDecoderLayer(width, num_heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(width))

    def forward(self, instruction: Tensor, mask: Tensor) -> Tensor:
        memory = self.memory(instruction)  # (N, L, P)
        padding = mask == 0  # (N, L), True = ignore
        inputs = self.start.expand(instruction.shape[0], 1, -1)  # (N, 1, P): the start token z
        states = []
        for t in range(self.steps):
            x = inputs + self.position.weight[: t + 1]  # (N, t+1, P)
            causal = nn.Transformer.generate_square_subsequent_mask(t + 1, device=x.device, dtype=x.dtype)
            h = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=padding)[:, -1]
            states.append(h)  # (N, P)
            inputs = torch.cat([inputs, h.unsqueeze(1)], 1)
        return torch.stack(states, 1)  # (N, T, P)


@dataclass
class GeneratedLoRA:
    A: Tensor  # (N, S, r, in)
    B: Tensor  # (N, S, out, r)
    hidden: Tensor  # (N, T, P) per-layer context states (HART's consistency loss reads these)


class LoRAGenerator(nn.Module):
    """Encoded instruction (N, L, d) + mask → LoRA for every site, with one head shared by all sites.

    Init: the heads read a layer-normed h, so A's entries start at scale ~1/sqrt(in) (like peft's
    kaiming init of lora_A) and B's at ~`b_init_std`: small but not zero, so the generated delta
    starts near zero while gradients reach both heads from the first step (with B exactly 0, A
    would get no gradient).
    """

    def __init__(
        self,
        layout: SiteLayout,
        instruction_dim: int,
        shapes: Sequence[tuple[int, int]],
        rank: int,
        kind: GeneratorKind = "mlp",
        width: int = 128,
        hidden_dim: int = 64,
        site_embed_dim: int = 32,
        b_init_std: float = 1e-3,
        hart_layers: int = 1,
        hart_heads: int = 4,
    ):
        super().__init__()
        if kind not in ("mlp", "hart"):
            raise ValueError(f"generator must be 'mlp' or 'hart', got {kind!r}")
        if len(shapes) != layout.num_sites:
            raise ValueError(f"{len(shapes)} site shapes for {layout.num_sites} sites")
        self.kind, self.rank = kind, rank
        self.shapes = tuple(shapes)
        self.in_features, self.out_features = max(i for i, _ in shapes), max(o for _, o in shapes)
        self.layout = layout
        # One head for every site writes the widest shape; a narrower site (a grouped-query v_proj) keeps its
        # own block and the rest is zeroed, so per-site shapes need no per-site heads.
        self.ragged = len(set(self.shapes)) > 1
        if self.ragged:
            mask_A, mask_B = site_masks(self.shapes)
            self.register_buffer("mask_A", mask_A, persistent=False)  # (S, 1, in)
            self.register_buffer("mask_B", mask_B, persistent=False)  # (S, out, 1)
        for name, values in (("site_stack", layout.stack), ("site_layer", layout.layer), ("site_kind", layout.kind),
                             ("site_step", layout.step)):
            self.register_buffer(name, torch.tensor(values), persistent=False)
        # The MLP reads one pooled vector; HART's decoder cross-attends to all of I instead.
        self.pooler = Pooler(instruction_dim, width) if kind == "mlp" else None
        self.layer_states = LayerStates(instruction_dim, width, layout.num_steps, hart_layers, hart_heads) if kind == "hart" else None
        self.stack_embedding = nn.Embedding(len(STACKS), site_embed_dim)
        self.layer_embedding = nn.Embedding(1 + max(layout.layer), site_embed_dim)
        self.kind_embedding = nn.Embedding(2, site_embed_dim)
        self.from_context = nn.Linear(width, hidden_dim)
        self.from_site = nn.Linear(site_embed_dim, hidden_dim, bias=False)
        self.norm = nn.LayerNorm(hidden_dim)  # fixes the heads' input scale, whatever reads the instruction
        self.head_A = nn.Linear(hidden_dim, rank * self.in_features)
        self.head_B = nn.Linear(hidden_dim, self.out_features * rank)
        self._init_heads(hidden_dim, b_init_std)

    def _init_heads(self, hidden_dim: int, b_init_std: float) -> None:
        nn.init.normal_(self.head_A.weight, std=1.0 / math.sqrt(hidden_dim * self.in_features))
        nn.init.normal_(self.head_B.weight, std=b_init_std / math.sqrt(hidden_dim))
        nn.init.zeros_(self.head_A.bias)
        nn.init.zeros_(self.head_B.bias)

    @property
    def num_sites(self) -> int:
        return self.layout.num_sites

    def reader(self) -> nn.Module:
        """The part that reads the encoded instruction: the pooler, or HART's decoder."""
        return self.pooler if self.pooler is not None else self.layer_states

    def site_embeddings(self) -> Tensor:
        """(S, E): what tells one site from another."""
        return self.stack_embedding(self.site_stack) + self.layer_embedding(self.site_layer) + self.kind_embedding(self.site_kind)

    def context(self, instruction: Tensor, mask: Tensor) -> Tensor:
        """Per-layer context states (N, T, P); the MLP generator has one state for all layers (T = 1)."""
        if self.layer_states is None:
            return self.pooler(instruction, mask).unsqueeze(1)  # (N, 1, P)
        return self.layer_states(instruction, mask)  # (N, T, P)

    def forward(self, instruction: Tensor, mask: Tensor) -> GeneratedLoRA:
        states = self.context(instruction, mask)  # (N, T, P)
        per_site = states if states.shape[1] == 1 else states[:, self.site_step]  # (N, 1 or S, P)
        hidden = self.norm(nn.functional.gelu(self.from_context(per_site) + self.from_site(self.site_embeddings())))  # (N, S, H)
        n, s = hidden.shape[:2]
        A = self.head_A(hidden).view(n, s, self.rank, self.in_features)  # (N, S, r, in)
        B = self.head_B(hidden).view(n, s, self.out_features, self.rank)  # (N, S, out, r)
        if self.ragged:
            A, B = A * self.mask_A, B * self.mask_B
        return GeneratedLoRA(A, B, states)

    def site_shapes(self) -> tuple[tuple[int, int], ...] | None:
        """What `LoRAWeights.shapes` holds for this generator's output: None when every site has one shape."""
        return self.shapes if self.ragged else None
