"""The hypernetwork: an encoded instruction → LoRA factors for every q/v site of the backbone.

    instruction ids ─► T5 encoder ─► I (N, L, d) ─► masked mean ─► p (N, d)
                                                                    │
    site id 2m / 2m+1 ─► embedding e (S, e_dim) ───────────────────►│
                                                                    ▼
                          per attention module m (shared by its q and v sites):
                          h = GELU(W_in[m] p + W_id[m] e + b[m])           (N, M, 2, H)
                          A = head_A[m] h ─► (N, S, r, in)   B = head_B[m] h ─► (N, S, out, r)

The instruction encoder is the backbone's own encoder (owned by the model, see `model.py`), so this
module only pools and generates. All M per-module MLPs are stored as stacked tensors and run as one
einsum each, rather than M small Linear layers in a loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean over the unmasked positions: (N, L, d), (N, L) → (N, d)."""
    weights = mask.to(states.dtype).unsqueeze(-1)  # (N, L, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@dataclass
class GeneratedLoRA:
    A: Tensor  # (N, S, r, in)
    B: Tensor  # (N, S, out, r)
    hidden: Tensor  # (N, M, 2, H) generator hidden states (HART's consistency loss reads these)


class LoRAGenerator(nn.Module):
    """Per-module two-layer MLPs, shared by q and v of a module and told apart by a site-id embedding.

    Init: A's head gives entries of scale ~1/sqrt(in) (like peft's kaiming init of lora_A); B's head
    is small but not zero (`b_init_std`), so the generated delta starts near zero while gradients
    reach both heads from the first step (with B exactly 0, A would get no gradient).
    """

    def __init__(
        self,
        num_modules: int,
        instruction_dim: int,
        in_features: int,
        out_features: int,
        rank: int,
        hidden_dim: int = 128,
        site_embed_dim: int = 32,
        b_init_std: float = 1e-3,
    ):
        super().__init__()
        self.num_modules, self.rank = num_modules, rank
        self.in_features, self.out_features = in_features, out_features
        self.site_embedding = nn.Embedding(2 * num_modules, site_embed_dim)
        fan_in = instruction_dim + site_embed_dim
        self.w_instruction = nn.Parameter(torch.randn(num_modules, instruction_dim, hidden_dim) / math.sqrt(fan_in))
        self.w_site = nn.Parameter(torch.randn(num_modules, site_embed_dim, hidden_dim) / math.sqrt(fan_in))
        self.b_hidden = nn.Parameter(torch.zeros(num_modules, hidden_dim))
        a_std = 1.0 / math.sqrt(hidden_dim * in_features)
        b_std = b_init_std / math.sqrt(hidden_dim)
        self.head_A = nn.Parameter(torch.randn(num_modules, hidden_dim, rank * in_features) * a_std)
        self.head_B = nn.Parameter(torch.randn(num_modules, hidden_dim, out_features * rank) * b_std)
        self.bias_A = nn.Parameter(torch.zeros(num_modules, rank * in_features))
        self.bias_B = nn.Parameter(torch.zeros(num_modules, out_features * rank))

    @property
    def num_sites(self) -> int:
        return 2 * self.num_modules

    def forward(self, pooled: Tensor) -> GeneratedLoRA:
        n, m = pooled.shape[0], self.num_modules
        from_instruction = torch.einsum("nd,mdh->nmh", pooled, self.w_instruction) + self.b_hidden  # (N, M, H)
        site_ids = self.site_embedding.weight.view(m, 2, -1)  # (M, 2, E): row 2m is q, 2m+1 is v
        from_site = torch.einsum("mke,meh->mkh", site_ids, self.w_site)  # (M, 2, H)
        hidden = nn.functional.gelu(from_instruction.unsqueeze(2) + from_site)  # (N, M, 2, H)
        A = torch.einsum("nmkh,mho->nmko", hidden, self.head_A) + self.bias_A[:, None]  # (N, M, 2, r·in)
        B = torch.einsum("nmkh,mho->nmko", hidden, self.head_B) + self.bias_B[:, None]  # (N, M, 2, out·r)
        A = A.reshape(n, 2 * m, self.rank, self.in_features)  # (N, S, r, in)
        B = B.reshape(n, 2 * m, self.out_features, self.rank)  # (N, S, out, r)
        return GeneratedLoRA(A, B, hidden)


class HyperNetwork(nn.Module):
    """Encoded instruction (N, L, d) + mask → LoRA for every site. Pools, then generates."""

    def __init__(self, generator: LoRAGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, instruction: Tensor, instruction_mask: Tensor) -> GeneratedLoRA:
        return self.generator(masked_mean(instruction, instruction_mask))  # (N, d) → LoRA
