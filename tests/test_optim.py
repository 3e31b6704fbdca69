"""The stages' optimizers: AdamW (torch's fused kernel by default, the same update as the unfused one) or Adafactor,
weight decay on every weight or on weight matrices only, and the schedule."""

import pytest
import torch
from transformers.optimization import Adafactor

from tagi.training.config import Optimization
from tagi.training.optim import make_adamw, make_optimizer, optimizer_and_schedule, parameter_groups


def _three_steps(fused: bool) -> tuple[list[torch.Tensor], torch.optim.AdamW]:
    torch.manual_seed(0)
    weights = [torch.randn(64, 32, requires_grad=True), torch.randn(32, requires_grad=True)]
    optimizer = make_adamw(weights, Optimization(learning_rate=1e-2, weight_decay=0.01, fused=fused))
    for _ in range(3):
        loss = sum((w.sin() * torch.arange(w.numel()).view_as(w)).sum() for w in weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return [w.detach() for w in weights], optimizer


def test_fused_adamw_is_the_default_and_gives_the_same_update():
    assert Optimization().fused
    default, default_optimizer = _three_steps(fused=False)
    fused, fused_optimizer = _three_steps(fused=True)
    assert not default_optimizer.defaults["fused"] and fused_optimizer.defaults["fused"] is True
    moved = [(after - before).abs().max() for after, before in zip(default, _initial())]
    assert all(m > 1e-3 for m in moved), "the steps did not move the weights"
    for a, b in zip(default, fused):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _initial() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(64, 32), torch.randn(32)]


class _Net(torch.nn.Module):
    """A weight matrix with a bias, a norm, an embedding table, and a head tied to that table."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.proj = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: still an embedding table
        torch.nn.init.ones_(self.norm.bias)  # a zero would not show decay


def _decayed_after_a_zero_gradient_step(scope: str) -> dict[str, bool]:
    """Which weights AdamW's decay moved: with a zero gradient, decay is the only thing that moves a weight."""
    torch.manual_seed(0)
    net = _Net()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimization = Optimization(learning_rate=0.1, weight_decay=0.5, weight_decay_on=scope, fused=False)
    optimizer = make_optimizer(parameter_groups(net, optimization), optimization)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {name: not torch.equal(p.detach(), before[name]) for name, p in net.named_parameters()}


def test_weight_decay_on_matrices_spares_biases_norms_and_embeddings():
    assert Optimization().weight_decay_on == "all"  # what every result so far was trained with
    assert all(_decayed_after_a_zero_gradient_step("all").values())
    assert _decayed_after_a_zero_gradient_step("matrices") == {
        "embed.weight": False, "proj.weight": True, "proj.bias": False, "norm.weight": False, "norm.bias": False}


def test_parameter_groups_keep_every_trainable_weight_once_and_skip_frozen_ones():
    net = _Net()
    net.norm.requires_grad_(False)
    groups = parameter_groups(net, Optimization(weight_decay=0.1, weight_decay_on="matrices"))
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters() if p.requires_grad)
    assert [group["weight_decay"] for group in groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match="optimization.weight_decay_on: 'norms'"):
        parameter_groups(net, Optimization(weight_decay_on="norms"))


def test_adafactor_steps_at_the_scheduled_learning_rate():
    """Table 6's pretraining optimizer, as the Hugging Face Trainer builds it: the learning rate is the configured
    one (not Adafactor's relative step, not scaled by the weight's norm), so warm-up and decay drive it."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(10 * torch.randn(32, 16))  # RMS 10: scale_parameter would make the step 10× larger
    before = weight.detach().clone()
    optimization = Optimization(optimizer="adafactor", learning_rate=1e-3, warmup_ratio=0.5)
    built = optimizer_and_schedule([weight], optimization, total_steps=4)
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, Adafactor)
    for step in range(3):
        moved = weight.detach().clone()
        weight.grad = torch.randn_like(weight)
        optimizer.step()
        scheduler.step()
        if step == 0:  # the warm-up's first step is at learning rate 0
            assert torch.equal(weight.detach(), before)
    step_rms = (weight.detach() - moved).pow(2).mean().sqrt()  # step 3: warm-up over, lr 1e-3 (update RMS ≤ 1 × lr)
    assert 2e-4 < step_rms < 2e-3, step_rms


def test_an_unknown_optimizer_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="optimization.optimizer: 'sgd'"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], Optimization(optimizer="sgd"))
