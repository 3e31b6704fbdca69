"""Finetuning losses beyond cross-entropy: small pure-torch functions (no Lightning).

    L = CE + λ_kl · kl_distillation(student, teacher)        token-level, target positions only
           + λ_param · lora_param_distance(form, generated LoRA, teacher LoRA)
           (+ λ_cst · consistency_loss(HART per-layer states, previous step's batch mean))

LoRA tensors use peft's layout stacked over rows (examples/tasks) and sites:

    A: (N, S, r, in)      B: (N, S, out, r)      ΔW = s · B @ A   with s = alpha / r
"""

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Scaling = float | Tensor  # a float, or a tensor broadcastable to (N, S)
ParamForm = Literal["ab", "delta"]  # the LoRA distance: on A and B separately, or on ΔW = s·B·A


def _upcast(x: Tensor) -> Tensor:
    # Softmax and Gram sums lose too much in fp16/bf16; never downcast float64 inputs.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def kl_distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """T² · KL(P_teacher ‖ P_student) at temperature T, averaged over target tokens.

    `student_logits`, `teacher_logits`: (B, T, V); `labels`: (B, T), `ignore_index` marks padding.
    The teacher is a constant (detached here). Returns a scalar; 0 when there are no target tokens.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    mask = labels != ignore_index  # (B, T)
    # Select target positions first: padding logits never enter the softmax (no NaN leaks via 0·inf).
    student = _upcast(student_logits[mask]) / temperature  # (M, V)
    teacher = _upcast(teacher_logits.detach()[mask]) / temperature  # (M, V)
    kl = F.kl_div(
        F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True, reduction="none"
    ).sum(-1)  # (M,)
    # T² keeps gradient magnitudes comparable across temperatures (Hinton et al., 2015).
    return kl.sum() / mask.sum().clamp(min=1) * temperature**2


def _check_same_shape(name: str, student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"'ab' LoRA distance needs equal shapes (same rank): {name}_student {tuple(student.shape)} vs "
            f"{name}_teacher {tuple(teacher.shape)}; use form 'delta' for different ranks"
        )


def lora_ab_distance(A_s: Tensor, B_s: Tensor, A_t: Tensor, B_t: Tensor,
                     shapes: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """MSE(A_s, A_t) + MSE(B_s, B_t): the TAGI paper's literal eq. 4. Teacher tensors are constants.

    A: (N, S, r, in), B: (N, S, out, r), zero-padded to the widest site; `shapes`, each site's (in, out),
    makes each mean one over the sites' real entries (grouped-query attention: v_proj's B is narrower than
    q_proj's), not over the padding too. Not invariant to LoRA's factorisation symmetry (A → RA, B → BR⁻¹):
    two adapters with the same ΔW can be far apart here.
    """
    _check_same_shape("A", A_s, A_t)
    _check_same_shape("B", B_s, B_t)
    if shapes is None:
        return F.mse_loss(A_s, A_t.detach()) + F.mse_loss(B_s, B_t.detach())
    rows, rank = A_s.shape[0], A_s.shape[-2]
    real_A, real_B = (rows * rank * sum(size for size in sizes) for sizes in zip(*shapes))  # in-, out-features
    # padding is zero in both (masked generator, zero-padded teachers), so it adds nothing to the sums
    return ((A_s - A_t.detach()) ** 2).sum() / real_A + ((B_s - B_t.detach()) ** 2).sum() / real_B


def _frobenius_inner(B1: Tensor, A1: Tensor, B2: Tensor, A2: Tensor) -> Tensor:
    """⟨B1 A1, B2 A2⟩_F per (N, S) without forming the out×in products.

    ⟨B1A1, B2A2⟩ = tr(A1ᵀ B1ᵀ B2 A2) = tr((B1ᵀB2)(A2A1ᵀ)) = Σ_ij (B1ᵀB2)_ij (A1A2ᵀ)_ij
    """
    gram_b = B1.transpose(-1, -2) @ B2  # (N, S, r1, r2)
    gram_a = A1 @ A2.transpose(-1, -2)  # (N, S, r1, r2)
    return (gram_b * gram_a).sum(dim=(-1, -2))  # (N, S)


def lora_delta_distance(
    A_s: Tensor, B_s: Tensor, s_s: Scaling, A_t: Tensor, B_t: Tensor, s_t: Scaling, eps: float = 1e-12
) -> Tensor:
    """‖ΔW_s − ΔW_t‖²_F / ‖ΔW_t‖²_F per site (ΔW = s·B·A), mean over rows and sites.

    Relative to the teacher's own size, so a generated delta of zero costs 1 at every shape (the
    absolute MSE is ~1e-5 against CE ≈ 1, a weight no setting could share). Expanded into r×r Gram
    products, so the cost is O(r² (out + in)) per site instead of O(r · out · in). Ranks may differ.
    Invariant to A → RA, B → BR⁻¹. Teacher tensors are constants. Absolute round-off is relative to
    ‖ΔW‖², not to the difference, hence the clamp at 0.
    """
    if A_s.shape[-1] != A_t.shape[-1] or B_s.shape[-2] != B_t.shape[-2]:
        raise ValueError(
            f"student and teacher LoRA disagree on (out, in): A {tuple(A_s.shape)} / B {tuple(B_s.shape)} vs "
            f"A {tuple(A_t.shape)} / B {tuple(B_t.shape)}"
        )
    A_s, B_s = _upcast(A_s), _upcast(B_s)
    A_t, B_t = _upcast(A_t.detach()), _upcast(B_t.detach())
    teacher_sq = s_t * s_t * _frobenius_inner(B_t, A_t, B_t, A_t)  # (N, S)
    sq_norm = (
        s_s * s_s * _frobenius_inner(B_s, A_s, B_s, A_s) - 2 * s_s * s_t * _frobenius_inner(B_s, A_s, B_t, A_t) + teacher_sq
    )  # (N, S)
    return (sq_norm.clamp(min=0) / teacher_sq.clamp(min=eps)).mean()


def lora_param_distance(
    form: ParamForm,
    A_s: Tensor,
    B_s: Tensor,
    s_s: Scaling,
    A_t: Tensor,
    B_t: Tensor,
    s_t: Scaling,
    shapes: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """Dispatch to `lora_ab_distance` ("ab", scalings unused) or `lora_delta_distance` ("delta")."""
    if form == "ab":
        return lora_ab_distance(A_s, B_s, A_t, B_t, shapes)
    if form == "delta":
        return lora_delta_distance(A_s, B_s, s_s, A_t, B_t, s_t)
    raise ValueError(f"unknown LoRA distance form {form!r}; expected 'ab' or 'delta'")


def consistency_loss(hidden: Tensor, previous_mean: Tensor | None) -> tuple[Tensor, Tensor]:
    """HART's local-consistency term: MSE(batch mean of `hidden`, previous step's batch mean).

    `hidden`: (N, ...) generator hidden states; the batch mean makes steps with different N
    comparable. Returns `(loss, new_mean)`, `new_mean` detached for the next step. With no
    previous mean the loss is a zero that is still part of the graph (backward works).
    """
    mean = hidden.mean(dim=0)  # (...)
    new_mean = mean.detach()
    if previous_mean is None:
        return mean.sum() * 0.0, new_mean
    if previous_mean.shape != mean.shape:
        raise ValueError(
            f"previous mean has shape {tuple(previous_mean.shape)}, this step's is {tuple(mean.shape)}"
        )
    return F.mse_loss(mean, previous_mean.detach()), new_mean
