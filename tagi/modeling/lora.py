"""Batched, per-example LoRA on the q/v projections of a backbone, in peft's layout and scaling.

    x ─┬─► W ─────────────────────────► (+) ─► y       y_i = W x_i + s · B_i (A_i x_i)
       └─► A_i (r×in) ─► B_i (out×r) ─► ·s ┘          row i of the batch has its own (A_i, B_i)

A LoRA *site* is one `nn.Linear` that `peft.LoraConfig(target_modules=targets)` would wrap: on a T5
(targets "q", "v") the q and v projections of encoder self-attention, decoder self-attention and
decoder cross-attention; on a Llama-family causal LM ("q_proj", "v_proj") those of every layer
(`tagi.modeling.families` says which). Sites are ordered as the model lists its modules, so site
`2m` is the q and site `2m + 1` the v of attention module `m`. Weights for all sites are stacked:

    A: (N, S, r, in)    like peft's lora_A.weight (r, in) per site
    B: (N, S, out, r)   like peft's lora_B.weight (out, r) per site
    scale = alpha / r   like peft's default (non-rsLoRA) scaling

Sites may differ in shape: with grouped-query attention a Llama's v_proj writes (kv heads · head dim)
= 192 features where q_proj writes 576. The stacks are then as wide as the widest site and each site
uses its own top-left block, A[..., :in_s] and B[..., :out_s, :]; `shapes` lists (in_s, out_s), and
every entry outside a site's block is zero, so norms and distances over the stack are the sites'.

The backbone is never modified structurally: `apply_lora` adds forward hooks for the duration of a
`with` block and `merged_lora` adds the delta into the weights and restores the saved originals;
both undo themselves in `finally`, so an exception leaves no state behind.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

@dataclass
class LoRAWeights:
    """Stacked LoRA factors for every site, one set per row (task or example)."""

    A: Tensor  # (N, S, r, in)
    B: Tensor  # (N, S, out, r)
    scale: float  # alpha / r
    shapes: tuple[tuple[int, int], ...] | None = None  # (in, out) per site; None: every site is (in, out) of the stack

    def __post_init__(self) -> None:
        if self.A.dim() != 4 or self.B.dim() != 4:
            raise ValueError(f"LoRA A must be (N, S, r, in) and B (N, S, out, r); got {tuple(self.A.shape)} and {tuple(self.B.shape)}")
        n, s, r, _ = self.A.shape
        if self.B.shape[:2] != (n, s) or self.B.shape[3] != r:
            raise ValueError(f"LoRA A {tuple(self.A.shape)} and B {tuple(self.B.shape)} disagree on rows, sites or rank")
        if self.shapes is not None and (len(self.shapes) != s or max(i for i, _ in self.shapes) != self.A.shape[3]
                                        or max(o for _, o in self.shapes) != self.B.shape[2]):
            raise ValueError(f"LoRA site shapes {self.shapes[:3]}... do not fit stacks A {tuple(self.A.shape)}, B {tuple(self.B.shape)}")

    def site_shape(self, site: int) -> tuple[int, int]:
        """(in, out) of one site."""
        return self.shapes[site] if self.shapes is not None else (self.A.shape[3], self.B.shape[2])

    def site_factors(self, row: int, site: int) -> tuple[Tensor, Tensor]:
        """One site's own A (r, in_s) and B (out_s, r), as peft stores them."""
        n_in, n_out = self.site_shape(site)
        return self.A[row, site, :, :n_in], self.B[row, site, :n_out]

    @property
    def rank(self) -> int:
        return self.A.shape[2]

    def __len__(self) -> int:
        return self.A.shape[0]

    def select(self, index: Tensor) -> "LoRAWeights":
        """Rows picked by `index` (e.g. a task index per example): (len(index), S, ...)."""
        return LoRAWeights(self.A.index_select(0, index), self.B.index_select(0, index), self.scale, self.shapes)

    def delta(self, row: int, site: int) -> Tensor:
        """The dense update s·B·A of one site: (out_s, in_s). Only for merging and tests."""
        A, B = self.site_factors(row, site)
        return self.scale * (B @ A)


def site_shapes(sites: Sequence[nn.Linear]) -> tuple[tuple[int, int], ...] | None:
    """(in, out) per site where the sites differ in shape, else None (one shape: the stacks are exact)."""
    shapes = tuple((site.in_features, site.out_features) for site in sites)
    return None if len(set(shapes)) <= 1 else shapes


def peft_init(sites: Sequence[nn.Linear], rows: int, rank: int) -> tuple[Tensor, Tensor]:
    """Trainable LoRA stacks for `rows` adapters, peft's init: A ~ U(±1/sqrt(in)) (kaiming_uniform with a=√5),
    B = 0, so training starts at the plain model. A (rows, S, r, in), B (rows, S, out, r); zero outside each
    site's block where sites differ in shape."""
    width_in, width_out = max(s.in_features for s in sites), max(s.out_features for s in sites)
    B = torch.zeros(rows, len(sites), width_out, rank)
    if all(site.in_features == width_in for site in sites):  # one draw for the whole stack (T5, Llama)
        bound = 1.0 / math.sqrt(width_in)
        return torch.empty(rows, len(sites), rank, width_in).uniform_(-bound, bound), B
    A = torch.zeros(rows, len(sites), rank, width_in)
    for index, site in enumerate(sites):
        bound = 1.0 / math.sqrt(site.in_features)
        A[:, index, :, :site.in_features].uniform_(-bound, bound)
    return A, B


def site_masks(shapes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Ones inside each site's block of the stacks: A's (S, 1, in_max) and B's (S, out_max, 1)."""
    width_in, width_out = max(i for i, _ in shapes), max(o for _, o in shapes)
    mask_A = torch.stack([torch.arange(width_in) < n_in for n_in, _ in shapes]).unsqueeze(1)  # (S, 1, in)
    mask_B = torch.stack([torch.arange(width_out) < n_out for _, n_out in shapes]).unsqueeze(2)  # (S, out, 1)
    return mask_A.float(), mask_B.float()


def lora_site_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the `nn.Linear` modules peft's `LoraConfig(target_modules=targets)` matches, in model order."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    ]


def _check_sites(sites: Sequence[nn.Linear], lora: LoRAWeights) -> None:
    if lora.A.shape[1] != len(sites):
        raise ValueError(f"LoRA weights cover {lora.A.shape[1]} sites but the model has {len(sites)} q/v sites")
    for index, site in enumerate(sites):
        if lora.site_shape(index) != (site.in_features, site.out_features):
            raise ValueError(
                f"LoRA shapes A {tuple(lora.A.shape)}, B {tuple(lora.B.shape)} (site {index}: {lora.site_shape(index)}) do not "
                f"fit site {index}, Linear({site.in_features} → {site.out_features})"
            )


class _RowExpander:
    """Maps the rows of a call to the rows of the LoRA weights, and hands each site its factors.

    `generate` repeats each example `k` times (beam search, num_return_sequences) with
    `repeat_interleave`, so a call with N·k rows uses row i // k of the weights. The expanded copy is
    built once per k and reused for every site and decoding step of this `with` block.

    The (N, S, ...) stacks are split into per-site views with one `unbind`, not indexed per site:
    the backward of `A[:, site]` materialises a zero tensor of the whole stack for every site, which
    made the training step's backward O(S²) in memory traffic (70% of a t5-small student step).
    """

    def __init__(self, lora: LoRAWeights):
        self.lora = lora
        self._per_site: dict[int, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = {}

    def factors(self, batch: int, site: int) -> tuple[Tensor, Tensor]:
        """Site `site`'s A (n or 1, r, in) and B (n or 1, out, r) for a call with `batch` rows."""
        n = len(self.lora)
        if n == 1 or batch == n:  # one task for all rows broadcasts in matmul; or rows match
            k = 1
        elif batch % n:
            raise RuntimeError(f"a call with {batch} rows cannot be matched to {n} rows of LoRA weights")
        else:
            k = batch // n
        if k not in self._per_site:
            A, B = self.lora.A, self.lora.B
            if k > 1:
                A, B = A.repeat_interleave(k, 0), B.repeat_interleave(k, 0)
            A_sites, B_sites = A.unbind(1), B.unbind(1)
            if self.lora.shapes is not None:  # each site its own block of the stack
                A_sites = tuple(a[..., :n_in] for a, (n_in, _) in zip(A_sites, self.lora.shapes))
                B_sites = tuple(b[:, :n_out] for b, (_, n_out) in zip(B_sites, self.lora.shapes))
            self._per_site[k] = (A_sites, B_sites)
        A_sites, B_sites = self._per_site[k]
        return A_sites[site], B_sites[site]


def lora_update(x: Tensor, A: Tensor, B: Tensor, scale: float) -> Tensor:
    """s · B(Ax) per row, never forming B·A: x (n, T, in), A (n or 1, r, in), B (n or 1, out, r) → (n, T, out).
    The one place the LoRA product is written (the per-row hook here, FiD's per-task values in the model)."""
    low = x @ A.transpose(-1, -2)  # (n, T, r)
    return scale * (low @ B.transpose(-1, -2))  # (n, T, out)


def _lora_hook(site: int, rows: _RowExpander):
    def hook(module: nn.Linear, args: tuple, output: Tensor) -> Tensor:
        x = args[0]  # (n, T, in)
        A, B = rows.factors(x.shape[0], site)
        return output + lora_update(x, A.to(x.dtype), B.to(x.dtype), rows.lora.scale)

    return hook


@contextmanager
def apply_lora(sites: Sequence[nn.Linear], lora: LoRAWeights) -> Iterator[None]:
    """Run the model with per-row LoRA weights on `sites` inside the `with` block (autograd-safe)."""
    _check_sites(sites, lora)
    rows = _RowExpander(lora)
    handles = []
    try:
        for index, site in enumerate(sites):
            handles.append(site.register_forward_hook(_lora_hook(index, rows)))
        yield
    finally:
        for handle in handles:
            handle.remove()


EXACT_MERGE_DTYPES = (torch.float32, torch.float64)


def merge_is_exact(sites: Sequence[nn.Linear]) -> bool:
    """Whether adding a LoRA's delta into these weights keeps it. In bf16 a weight holds 8 significant
    bits, so W + ΔW rounds away most of a ΔW that is 1e-3 of W (78 % of the update lost, against 0.3 %
    for the per-row hook, which adds s·B(Ax) to the output). The same rounding happens when the weights
    are float32 but autocast runs the matmul in bf16/fp16 (Lightning's `bf16-mixed`)."""
    weight = sites[0].weight
    if weight.dtype not in EXACT_MERGE_DTYPES:
        return False
    device = weight.device.type
    return not (torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) not in EXACT_MERGE_DTYPES)


@contextmanager
def merged_lora(sites: Sequence[nn.Linear], lora: LoRAWeights) -> Iterator[None]:
    """Merge ONE task's LoRA into the site weights for the `with` block, then restore them exactly.

    For inference on single-task batches: the forward pass then costs what the bare backbone costs.
    The original weights are saved and copied back (not subtracted), so un-merging is bit-exact.
    Refused where the merge would round the update away (`merge_is_exact`): use `apply_lora` there.
    """
    _check_sites(sites, lora)
    if not merge_is_exact(sites):
        raise RuntimeError(f"merging a LoRA into {sites[0].weight.dtype} weights (or under low-precision autocast) "
                           "loses most of its update; use apply_lora")
    if len(lora) != 1:
        raise ValueError(f"merged_lora takes one task's LoRA; got {len(lora)} rows (use apply_lora for mixed batches)")
    if torch.is_grad_enabled() and (lora.A.requires_grad or lora.B.requires_grad):
        raise RuntimeError("merged_lora is an inference path: call it under torch.no_grad() or use apply_lora to train")
    originals = [site.weight.detach().clone() for site in sites]
    try:
        with torch.no_grad():
            for index, site in enumerate(sites):
                site.weight.add_(lora.delta(0, index).to(site.weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for site, weight in zip(sites, originals):
                site.weight.copy_(weight)
