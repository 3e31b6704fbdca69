"""The stages' AdamW: torch's fused kernel by default (optimization.fused), the same update as the unfused one."""

import torch

from tagi.training.config import Optimization
from tagi.training.optim import make_adamw


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
