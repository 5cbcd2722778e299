"""Quantized training signals: gradients, errors, updates, weights and activations."""

from __future__ import annotations

import torch
from torch import nn

from modelzip.quantize.training import QuantizedTraining, TrainingQuantConfig, quantize_signal, wage


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _levels(t: torch.Tensor) -> int:
    return len(torch.unique(t.detach()))


def test_signal_quantizer_is_unbiased_and_on_the_grid():
    x = torch.tensor([0.05, -0.3, 0.71, 1.0])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([quantize_signal(x, 3, True, g) for _ in range(4000)])
    torch.testing.assert_close(draws.mean(0), x, atol=0.02, rtol=0)
    assert _levels(draws) <= 7
    assert torch.equal(quantize_signal(torch.zeros(3), 4), torch.zeros(3))


def test_each_object_is_quantized():
    model = _mlp()
    qt = QuantizedTraining(
        model, TrainingQuantConfig(weights=2, activations=3, gradients=3, errors=3)
    )
    x = torch.randn(32, 6, requires_grad=True)
    seen: dict[str, torch.Tensor] = {}
    model[2].register_forward_pre_hook(lambda m, a: seen.__setitem__("act", a[0]))
    loss = model(x).square().sum()
    loss.backward()
    assert _levels(model[0].weight[0]) <= 3  # 2-bit symmetric: {-Δ, 0, Δ} per channel
    assert _levels(seen["act"]) <= 7
    assert _levels(model[0].parametrizations.weight.original.grad) <= 7
    qt.remove()
    assert not hasattr(model[0], "parametrizations")


def test_errors_are_quantized_before_the_weight_gradient():
    layer = nn.Linear(6, 16)
    qt = QuantizedTraining(layer, TrainingQuantConfig(errors=3))
    x = torch.eye(6)  # weight.grad = eᵀ·x = eᵀ: the quantized error itself
    (layer(x) * torch.randn(6, 16)).sum().backward()
    assert _levels(layer.weight.grad) <= 7
    qt.remove()


def test_updates_are_quantized_and_training_still_learns():
    model = _mlp()
    qt = QuantizedTraining(model, TrainingQuantConfig(updates=4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    losses = []
    for step in range(30):
        before = model[0].weight.detach().clone()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        for cb in qt.callbacks:
            cb(model, step + 1, 0)
        d = model[0].weight.detach() - before
        grid = d / d.abs().max() * 7  # 4 bits: 7 steps per sign
        torch.testing.assert_close(grid, torch.round(grid), atol=1e-3, rtol=0)
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_wage_preset():
    assert wage() == TrainingQuantConfig(weights=2, activations=8, gradients=8, errors=8)
