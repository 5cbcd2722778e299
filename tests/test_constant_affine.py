"""``core.model_links.constant_affine``: the arithmetic with constant numbers before a node (a
model's traced normalization) as one ``x·a + b``."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

from modelzip.core.model_links import constant_affine


def _last_op(fn) -> fx.Node:
    graph = fx.symbolic_trace(fn).graph
    return next(n for n in graph.nodes if n.op == "output").args[0]


@pytest.mark.parametrize(
    ("fn", "a", "b", "ops"),
    [
        (lambda x: (x - 0.5) / 0.25, 4.0, -2.0, 2),
        (lambda x: x * 2 + 1, 2.0, 1.0, 2),
        (lambda x: (x + 3) * 0.5 - 1, 0.5, 0.5, 3),
        (lambda x: x / 4, 0.25, 0.0, 1),
    ],
)
def test_the_chain_is_one_multiply_add(fn, a, b, ops):
    start, got_a, got_b, nodes = constant_affine(_last_op(fn))
    assert start.op == "placeholder" and len(nodes) == ops
    assert (got_a, got_b) == pytest.approx((a, b))
    x = torch.randn(10)
    assert torch.allclose(fn(x), x * got_a + got_b)


def test_it_stops_at_what_is_not_constant_arithmetic():
    class Two(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (x * y - 1) / 2

    start, a, b, nodes = constant_affine(_last_op(Two()))
    assert start.target is operator.mul and (a, b) == (0.5, -0.5)
    assert len(nodes) == 2
    lone = _last_op(lambda x: torch.relu(x))
    assert constant_affine(lone) == (lone, 1.0, 0.0, [])

    def shared(x: torch.Tensor) -> torch.Tensor:
        y = x - 1
        return (y / 2) * 3 + y.sum()  # y read twice: the walk stops before it

    start, a, _, nodes = constant_affine(_last_op(shared).args[0])  # from the product
    assert [n.target for n in nodes] == [operator.mul, operator.truediv]
    assert start.target is operator.sub and a == pytest.approx(1.5)
