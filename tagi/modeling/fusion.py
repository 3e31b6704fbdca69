"""Instruction fusion (TAGI §3.2.1, eq. 1): in each encoder block, right after self-attention, the
input states attend to the encoded instruction I of their task.

    S_l ← S_l + CrossAttn_l(RMSNorm(S_l), I)

The instruction's keys and values are projected once per task and shared by that task's rows.
"""

from __future__ import annotations

from torch import Tensor, nn


class FusionCrossAttention(nn.Module):
    """Pre-norm cross-attention from input states to the instruction, T5-style (residual outside).

    The output projection starts at zero, so a fresh model computes exactly what the backbone does.
    """

    def __init__(self, d_model: int, num_heads: int, d_kv: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.d_kv = num_heads, d_kv
        self.norm = nn.RMSNorm(d_model, eps=eps)
        self.query = nn.Linear(d_model, num_heads * d_kv, bias=False)
        self.key = nn.Linear(d_model, num_heads * d_kv, bias=False)
        self.value = nn.Linear(d_model, num_heads * d_kv, bias=False)
        self.out = nn.Linear(num_heads * d_kv, d_model, bias=False)
        nn.init.zeros_(self.out.weight)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.d_kv).transpose(1, 2)  # (N, h, T, dk)

    def project(self, instruction: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of N tasks' instructions: (N, h, L, dk) each. Once per task, not per input."""
        return self._heads(self.key(instruction)), self._heads(self.value(instruction))

    def forward(self, states: Tensor, keys: Tensor, values: Tensor, instruction_mask: Tensor) -> Tensor:
        """`keys`/`values` (B, h, L, dk) and mask (B, L) per input row (expanded views are fine)."""
        n, t, _ = states.shape
        q = self._heads(self.query(self.norm(states)))  # (B, h, T, dk)
        keep = instruction_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        attended = nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=keep)  # (B, h, T, dk)
        return states + self.out(attended.transpose(1, 2).reshape(n, t, -1))  # (B, T, d)


def per_row(x: Tensor, batch: int, task_index: Tensor | None) -> Tensor:
    """Task rows → input rows: a view for one task, a gather for several (no recomputation either way)."""
    if task_index is None:
        return x.expand(batch, *x.shape[1:]) if x.shape[0] == 1 else x
    return x.index_select(0, task_index)


def fusion_hook(fusion: FusionCrossAttention, instruction: Tensor, instruction_mask: Tensor, task_index: Tensor | None,
                batch: int):
    """Forward pre-hook on an encoder block's feed-forward sublayer: fuse right after self-attention.

    The instruction's keys/values are projected for the distinct tasks only, then shared by rows.
    """
    keys, values = (per_row(x, batch, task_index) for x in fusion.project(instruction))  # (B, h, L, dk)
    mask = per_row(instruction_mask, batch, task_index)  # (B, L)

    def hook(module: nn.Module, args: tuple) -> tuple:
        return (fusion(args[0], keys, values, mask), *args[1:])  # args[0]: (B, T, d)

    return hook
