"""Products with tensor-train (TT) and hierarchical-Tucker (HT) matrices, never forming ``W``.

A TT-matrix (Oseledets 2011; Novikov et al., "Tensorizing neural networks", NeurIPS 2015) stores
``W((i₁,j₁),…,(i_d,j_d)) = G₁[i₁,j₁]⋯G_d[i_d,j_d]`` with cores ``G_k`` of shape
``r_{k−1} × m_k × n_k × r_k``. ``Y = X·Wᵀ`` is one einsum of the input (``B × n₁ × ⋯ × n_d``) with
the cores; its cost depends entirely on the pairwise contraction order, which opt_einsum (Smith &
Gray, JOSS 2018) chooses to minimize MACs (``optimal`` for few operands, dynamic programming
otherwise). An HT matrix is the same kind of einsum over its leaves and transfer tensors (any
equation works with :class:`FactorizedPlan`).
"""

from __future__ import annotations

import functools
import math
import string
from collections.abc import Sequence

import torch

from modelzip.decompose._ops import ContractionPlan

#: The contraction plan of the decomposed layers (one opt_einsum wrapper for the package).
FactorizedPlan = ContractionPlan


@functools.lru_cache(maxsize=256)
def plan_for(equation: str, shapes: tuple[tuple[int, ...], ...]) -> FactorizedPlan:
    """The cached :class:`FactorizedPlan` of an equation and operand shapes."""
    return FactorizedPlan(equation, shapes)


def tt_equation(d: int) -> str:
    """Einsum of ``X`` (``b n₁…n_d``) with ``d`` TT cores (``r_{k−1} m_k n_k r_k``), giving
    ``b m₁…m_d``."""
    letters = string.ascii_letters
    b, n, m, r = letters[0], letters[1 : d + 1], letters[d + 1 : 2 * d + 1], letters[2 * d + 1 :]
    cores = [r[k] + m[k] + n[k] + r[k + 1] for k in range(d)]
    return f"{b}{n},{','.join(cores)}->{b}{m}"


def tt_matmul(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Y = X·Wᵀ`` for a TT-matrix ``W`` (``∏m_k × ∏n_k``) given by its cores; ``X`` is
    ``B × ∏n_k``. The cores' boundary ranks must be 1.

    The order is opt_einsum's MAC-minimal one. When the core-by-core sweep (last core first,
    one GEMM per core) is just as cheap, it runs instead: it has the same MACs and fewer copies.
    """
    in_modes = [int(c.shape[2]) for c in cores]
    rows = x.shape[0]
    shapes = ((rows, *in_modes), *(tuple(c.shape) for c in cores))
    plan = plan_for(tt_equation(len(cores)), shapes)
    if sweep_macs(rows, [tuple(c.shape) for c in cores]) <= plan.macs:
        return tt_sweep(x, cores)
    return plan(x.reshape(rows, *in_modes), *cores).reshape(rows, -1)


def sweep_macs(rows: int, shapes: Sequence[Sequence[int]]) -> int:
    """MACs of :func:`tt_sweep`: ``Σ_k rows·∏_{i<k} n_i·∏_{i>k} m_i·(n_k r_k)·(r_{k−1} m_k)``."""
    total = 0
    for k, (r0, m, n, r1) in enumerate(shapes):
        before = math.prod(int(s[2]) for s in shapes[:k])
        after = math.prod(int(s[1]) for s in shapes[k + 1 :])
        total += rows * before * after * n * r1 * r0 * m
    return total


def tt_sweep(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``X·Wᵀ`` core by core from the last: each step is one GEMM of the running tensor, laid
    out ``(m_{>k}, B·n_{<k}, n_k·r_k)``, with the core as an ``(n_k r_k) × (r_{k−1} m_k)``
    matrix, and one transpose that moves ``m_k`` to the front (the layout of Novikov et al.'s
    TT-matrix-by-vector algorithm, written by hand to avoid einsum's extra copies)."""
    rows = x.shape[0]
    t = x.reshape(1, -1, int(cores[-1].shape[2]))
    done = 1  # ∏ m_i of the cores already contracted
    for k in range(len(cores) - 1, -1, -1):
        r0, m, n, r1 = (int(s) for s in cores[k].shape)
        y = t.reshape(-1, n * r1) @ cores[k].permute(2, 3, 0, 1).reshape(n * r1, r0 * m)
        if k == 0:
            return y.reshape(done, rows, m).permute(1, 2, 0).reshape(rows, -1)
        n_prev = int(cores[k - 1].shape[2])
        t = y.reshape(done, -1, n_prev, r0, m).permute(4, 0, 1, 2, 3)
        done *= m
        t = t.reshape(done, -1, n_prev * r0)
    raise ValueError("tt_sweep needs at least one core")


def tt_to_dense(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The dense ``∏m_k × ∏n_k`` matrix of TT cores (for tests and the dense fallback)."""
    n = [int(c.shape[2]) for c in cores]
    eye = torch.eye(math.prod(n), dtype=cores[0].dtype).reshape(-1, *n)
    return tt_matmul(eye.reshape(math.prod(n), -1), cores).T


def tt_macs(rows: int, cores: Sequence[torch.Tensor]) -> tuple[int, int]:
    """``(planned MACs, dense MACs)`` of ``rows`` TT-matrix–vector products."""
    in_modes = [int(c.shape[2]) for c in cores]
    shapes = ((rows, *in_modes), *(tuple(c.shape) for c in cores))
    plan = plan_for(tt_equation(len(cores)), shapes)
    dense = rows * math.prod(in_modes) * math.prod(int(c.shape[1]) for c in cores)
    return plan.macs, dense


def factorized_matmul(
    equation: str, x: torch.Tensor, factors: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Evaluate any factorized product (an HT matrix's einsum, for instance) in the MAC-minimal
    order; ``x`` must already have the equation's input shape."""
    shapes = (tuple(x.shape), *(tuple(f.shape) for f in factors))
    return plan_for(equation, shapes)(x, *factors)


__all__ = [
    "FactorizedPlan",
    "factorized_matmul",
    "plan_for",
    "sweep_macs",
    "tt_equation",
    "tt_macs",
    "tt_matmul",
    "tt_sweep",
    "tt_to_dense",
]
