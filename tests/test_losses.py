import pytest
import torch
import torch.nn.functional as F

from tagi.modeling.losses import (
    consistency_loss,
    kl_distillation,
    lora_ab_distance,
    lora_delta_distance,
    lora_param_distance,
)


def _logits(seed: int, shape=(2, 5, 11)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _labels() -> torch.Tensor:
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(9))
    labels[0, 3:] = -100  # padding
    return labels


# --- KL distillation ------------------------------------------------------------------------------


def test_kl_positive_when_different_zero_when_identical():
    student, teacher, labels = _logits(0), _logits(1), _labels()
    assert kl_distillation(student, teacher, labels) > 0
    assert kl_distillation(student, student.clone(), labels).abs() <= 1e-7


def test_kl_matches_reference_over_target_tokens():
    student, teacher, labels = _logits(0), _logits(1), _labels()
    mask = labels != -100
    p_t = F.softmax(teacher[mask], -1)
    expected = (p_t * (p_t.log() - F.log_softmax(student[mask], -1))).sum(-1).mean()
    torch.testing.assert_close(kl_distillation(student, teacher, labels), expected)


def test_kl_gradients_reach_student_not_teacher():
    proj = torch.nn.Linear(4, 11)  # a small upstream parameter
    hidden = torch.randn(2, 5, 4)
    teacher = _logits(1).requires_grad_(True)
    loss = kl_distillation(proj(hidden), teacher, _labels())
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert teacher.grad is None

    student = _logits(0).requires_grad_(True)
    kl_distillation(student, teacher, _labels()).backward()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kl_ignores_padding_positions():
    student, teacher, labels = _logits(0), _logits(1), _labels()
    base = kl_distillation(student, teacher, labels)
    student2, teacher2 = student.clone(), teacher.clone()
    student2[0, 3:] = 1e4  # garbage where labels are padding
    teacher2[0, 3:] = -7.0
    torch.testing.assert_close(kl_distillation(student2, teacher2, labels), base)


def test_kl_temperature_squared_factor():
    student, teacher, labels = _logits(0), _logits(1), _labels()
    temp = 2.5
    unscaled = kl_distillation(student / temp, teacher / temp, labels, temperature=1.0)
    torch.testing.assert_close(kl_distillation(student, teacher, labels, temperature=temp), unscaled * temp**2)


def test_kl_no_target_tokens_is_zero():
    student = _logits(0).requires_grad_(True)
    loss = kl_distillation(student, _logits(1), torch.full((2, 5), -100))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()  # still part of the graph


# --- LoRA parameter distances ---------------------------------------------------------------------


def _lora(seed, n=2, s=3, r=4, out=6, inp=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, s, r, inp, generator=g, dtype=dtype), torch.randn(n, s, out, r, generator=g, dtype=dtype)


def _slow_delta(A1, B1, s1, A2, B2, s2):
    teacher = s2 * B2 @ A2  # (N, S, out, in)
    return (((s1 * B1 @ A1 - teacher) ** 2).sum((-2, -1)) / (teacher**2).sum((-2, -1))).mean()


def test_delta_distance_is_relative_to_the_teacher():
    """A zero student costs exactly 1 whatever the shape or scale, so weight 1 means the same everywhere."""
    for out, inp, scale in ((8, 6, 1.0), (64, 48, 1e-3)):
        A_t, B_t = _lora(1, out=out, inp=inp)
        zero_A, zero_B = torch.zeros_like(A_t), torch.zeros_like(B_t)
        torch.testing.assert_close(lora_delta_distance(zero_A, zero_B, 2.0, scale * A_t, B_t, 2.0),
                                   torch.tensor(1.0, dtype=torch.float64))
    A_s, B_s = _lora(0)
    A_t, B_t = _lora(1)
    base = lora_delta_distance(A_s, B_s, 2.0, A_t, B_t, 2.0)
    torch.testing.assert_close(lora_delta_distance(10 * A_s, B_s, 2.0, 10 * A_t, B_t, 2.0), base)  # scale-free


@pytest.mark.parametrize("r_s,r_t", [(4, 4), (2, 8), (8, 1)])
def test_delta_distance_matches_explicit_float64(r_s, r_t):
    A_s, B_s = _lora(0, r=r_s)
    A_t, B_t = _lora(1, r=r_t)
    s_s, s_t = 16 / r_s, 8 / r_t
    got = lora_delta_distance(A_s, B_s, s_s, A_t, B_t, s_t)
    torch.testing.assert_close(got, _slow_delta(A_s, B_s, s_s, A_t, B_t, s_t), rtol=1e-10, atol=1e-10)


def test_delta_distance_matches_explicit_float32():
    A_s, B_s = _lora(2, r=3, out=32, inp=24, dtype=torch.float32)
    A_t, B_t = _lora(3, r=5, out=32, inp=24, dtype=torch.float32)
    got = lora_delta_distance(A_s, B_s, 2.0, A_t, B_t, 0.5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _slow_delta(A_s, B_s, 2.0, A_t, B_t, 0.5), rtol=1e-5, atol=0)


def test_delta_distance_invariant_to_factorisation_but_ab_is_not():
    A_s, B_s = _lora(0)
    A_t, B_t = _lora(1)
    R = torch.randn(4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 3 * torch.eye(4)
    A_r, B_r = R @ A_s, B_s @ torch.linalg.inv(R)  # same ΔW, different factors
    torch.testing.assert_close(
        lora_delta_distance(A_r, B_r, 2.0, A_t, B_t, 2.0), lora_delta_distance(A_s, B_s, 2.0, A_t, B_t, 2.0)
    )
    assert lora_delta_distance(A_r, B_r, 2.0, A_s, B_s, 2.0) <= 1e-10
    assert lora_ab_distance(A_r, B_r, A_s, B_s) > 1e-3


def test_delta_distance_zero_for_identical_and_grad_only_to_student():
    A, B = _lora(0)
    assert lora_delta_distance(A, B, 2.0, A.clone(), B.clone(), 2.0) <= 1e-12
    A_s, B_s = _lora(1)
    A_s.requires_grad_(True)
    A_t, B_t = A.clone().requires_grad_(True), B.clone()
    lora_delta_distance(A_s, B_s, 2.0, A_t, B_t, 2.0).backward()
    assert A_s.grad.abs().sum() > 0 and A_t.grad is None


def test_ab_distance_is_mse_of_a_plus_mse_of_b():
    A_s, B_s = _lora(0)
    A_t, B_t = _lora(1)
    expected = ((A_s - A_t) ** 2).mean() + ((B_s - B_t) ** 2).mean()
    torch.testing.assert_close(lora_ab_distance(A_s, B_s, A_t, B_t), expected)


def test_ab_distance_rejects_different_ranks():
    A_s, B_s = _lora(0, r=2)
    A_t, B_t = _lora(1, r=4)
    with pytest.raises(ValueError, match=r"\(2, 3, 2, 5\).*\(2, 3, 4, 5\)"):
        lora_ab_distance(A_s, B_s, A_t, B_t)


def test_param_distance_dispatch():
    A_s, B_s = _lora(0)
    A_t, B_t = _lora(1)
    args = (A_s, B_s, 2.0, A_t, B_t, 2.0)
    assert lora_param_distance("ab", *args) == lora_ab_distance(A_s, B_s, A_t, B_t)
    assert lora_param_distance("delta", *args) == lora_delta_distance(*args)
    with pytest.raises(ValueError, match="'frobenius'.*'ab' or 'delta'"):
        lora_param_distance("frobenius", *args)


# --- HART consistency -----------------------------------------------------------------------------


def test_consistency_zero_without_previous_and_backward_works():
    hidden = torch.randn(3, 4, 8, requires_grad=True)
    loss, mean = consistency_loss(hidden, None)
    assert loss.item() == 0.0 and not mean.requires_grad
    torch.testing.assert_close(mean, hidden.detach().mean(0))
    loss.backward()


def test_consistency_mse_of_batch_means_across_batch_sizes():
    first = torch.randn(3, 4, 8)
    _, previous = consistency_loss(first, None)
    second = torch.randn(5, 4, 8, requires_grad=True)  # a different batch size
    loss, new_mean = consistency_loss(second, previous)
    expected = ((second.detach().mean(0) - first.mean(0)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(new_mean, second.detach().mean(0))


def test_consistency_previous_is_constant():
    previous = torch.randn(4, 8, requires_grad=True)
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    loss, _ = consistency_loss(hidden, previous)
    loss.backward()
    assert hidden.grad.abs().sum() > 0 and previous.grad is None


def test_the_ab_distance_averages_over_each_sites_real_entries():
    """Grouped-query attention: v_proj's B (out 2) is padded to q_proj's (out 4); the padding is zero in
    both LoRAs and must not dilute the MSE."""
    shapes = [(3, 4), (3, 2)]
    g = torch.Generator().manual_seed(0)
    A_s, A_t = torch.randn(1, 2, 2, 3, generator=g), torch.randn(1, 2, 2, 3, generator=g)
    B_s, B_t = torch.zeros(1, 2, 4, 2), torch.zeros(1, 2, 4, 2)
    B_s[0, 0], B_s[0, 1, :2] = torch.randn(4, 2, generator=g), torch.randn(2, 2, generator=g)
    B_t[0, 0], B_t[0, 1, :2] = torch.randn(4, 2, generator=g), torch.randn(2, 2, generator=g)
    real_B = torch.cat([(B_s[0, 0] - B_t[0, 0]).flatten(), (B_s[0, 1, :2] - B_t[0, 1, :2]).flatten()])
    expected = ((A_s - A_t) ** 2).mean() + (real_B ** 2).mean()
    assert torch.allclose(lora_param_distance("ab", A_s, B_s, 1.0, A_t, B_t, 1.0, shapes), expected)
    assert lora_param_distance("ab", A_s, B_s, 1.0, A_t, B_t, 1.0) < expected  # the padded mean: diluted
