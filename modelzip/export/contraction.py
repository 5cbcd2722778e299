"""Tensor-network layers (TT, HT, tensorized Tucker) as reshapes, transposes and MatMuls.

The layers compute with opt_einsum, whose torch backend traces to an ONNX ``Einsum`` node; not
every runtime implements ``Einsum`` well, so the exported graph performs the same MAC-minimal
pairwise order as plain ``Transpose``/``Reshape``/``MatMul`` nodes. Written by hand because no
library lowers an einsum path to batched matmuls with a symbolic batch dimension.

The batch index is given as a letter: every reshape writes ``-1`` for the group that contains it,
so the exported graph accepts any batch size, not just the one it was traced with.
"""

from __future__ import annotations

import math
from typing import Any

import opt_einsum
import torch
from torch import nn

from modelzip.decompose._ops import ContractionPlan


def _size(letters: str, sizes: dict[str, int], batch: str) -> int:
    return -1 if batch and batch in letters else math.prod(sizes[c] for c in letters)


def _pair(
    a: torch.Tensor, b: torch.Tensor, spec: str, sizes: dict[str, int], batch: str
) -> torch.Tensor:
    """``einsum(spec, a, b)`` as one batched matmul: (shared, free_a, inner) @ (shared, inner,
    free_b), then a transpose to the output order."""
    inputs, out = spec.split("->")
    ia, ib = inputs.split(",")
    # An index in one operand only and not in the output (a TT boundary rank) is summed first.
    kept_a = "".join(c for c in ia if c in ib or c in out)
    kept_b = "".join(c for c in ib if c in ia or c in out)
    if kept_a != ia:
        a, ia = _single(a, f"{ia}->{kept_a}"), kept_a
    if kept_b != ib:
        b, ib = _single(b, f"{ib}->{kept_b}"), kept_b
    shared = "".join(c for c in ia if c in ib and c in out)
    inner = "".join(c for c in ia if c in ib and c not in out)
    free_a = "".join(c for c in ia if c not in ib)
    free_b = "".join(c for c in ib if c not in ia)
    a = a.permute([ia.index(c) for c in shared + free_a + inner])
    b = b.permute([ib.index(c) for c in shared + inner + free_b])
    a = a.reshape(_size(shared, sizes, batch), _size(free_a, sizes, batch), _size(inner, sizes, ""))
    b = b.reshape(_size(shared, sizes, batch), _size(inner, sizes, ""), _size(free_b, sizes, batch))
    y = torch.matmul(a, b)
    got = shared + free_a + free_b
    y = y.reshape([-1 if c == batch else sizes[c] for c in got])
    return y.permute([got.index(c) for c in out])


def _single(x: torch.Tensor, spec: str) -> torch.Tensor:
    """A one-operand step: sum out indices absent from the output, then reorder."""
    ix, out = spec.split("->")
    gone = [i for i, c in enumerate(ix) if c not in out]
    if gone:
        x = x.sum(dim=gone)
        ix = "".join(c for c in ix if c in out)
    return x.permute([ix.index(c) for c in out])


def contract(plan: ContractionPlan, operands: list[torch.Tensor], batch: str) -> torch.Tensor:
    """Evaluate ``plan`` on ``operands`` with matmuls only, in the plan's own pairwise order.

    ``batch`` is the index letter of the batch dimension (its size may differ at run time).
    """
    terms = plan.equation.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, t in zip(terms, operands, strict=True):
        sizes.update(zip(term, (int(n) for n in t.shape), strict=True))
    _, info = opt_einsum.contract_path(plan.equation, *operands, optimize=plan.path)
    ops = list(operands)
    for step in info.contraction_list:
        positions, spec = step[0], step[2]
        taken = [ops.pop(p) for p in sorted(positions, reverse=True)]
        if len(taken) == 1:
            ops.append(_single(taken[0], spec))
        else:
            # opt_einsum pops (and writes the spec) in the same last-first order.
            ops.append(_pair(taken[0], taken[1], spec, sizes, batch))
    (result,) = ops
    return result


def _matmuls(plan: ContractionPlan, operands: list[torch.Tensor]) -> torch.Tensor:
    """:func:`contract` with the plan's first index as the batch (the layers' ``contract``)."""
    return contract(plan, operands, plan.equation[0])


class MatMulContraction(nn.Module):
    """A tensor-network layer whose ``forward(x, contract)`` takes its contraction (a
    :class:`~modelzip.decompose.factorized.FactorizedLinear`, a
    :class:`~modelzip.decompose.tt.TTConv2d`), with that contraction lowered to matmuls (same
    factors, shared parameters)."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.forward(x, _matmuls)
