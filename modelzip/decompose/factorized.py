"""Linear layers over factorized modes (TT, HT, tensorized Tucker) and the mode factorization.

A weight ``W`` of shape ``M × N`` is read as a tensor with output modes ``m_1..m_d``
(``M ≤ ∏ m_k``) and input modes ``n_1..n_d`` (``N ≤ ∏ n_k``); sizes without a good factorization
are padded with zero rows and columns. The layer computes ``y = W x`` as one tensor-network
contraction of ``x`` (reshaped to ``B × n_1 × … × n_d``) with the factors, in the MAC-minimal
order found by opt_einsum, so ``W`` itself is never formed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tensorly as tl
import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.workload import Workload
from modelzip.decompose._ops import ContractionPlan, DecomposedLinear, matmul_workloads, rows_of

FL = TypeVar("FL", bound="FactorizedLinear")
Contract = Callable[[ContractionPlan, list[torch.Tensor]], torch.Tensor]


def tensorly_torch() -> Any:
    """A context in which TensorLy computes with PyTorch tensors (thread-local)."""
    return tl.backend_context("pytorch", local_threadsafe=True)


@functools.lru_cache(maxsize=4096)
def _best_factorization(n: int, d: int) -> tuple[int, ...]:
    """The ``d`` factors of ``n`` (sorted) with the smallest largest factor."""
    if d == 1:
        return (n,)
    best: tuple[int, ...] | None = None
    for f in range(1, round(n ** (1 / d)) + 2):
        if n % f:
            continue
        rest = _best_factorization(n // f, d - 1)
        cand = tuple(sorted((f, *rest)))
        if best is None or (max(cand), -min(cand)) < (max(best), -min(best)):
            best = cand
    return best if best is not None else tuple(sorted((n, *([1] * (d - 1)))))


def factorize(n: int, d: int, slack: float = 0.1) -> tuple[int, ...]:
    """``d`` balanced modes whose product is ``n`` or, when ``n`` factors badly (a large prime
    factor), the smallest ``n' ∈ [n, (1 + slack)·n]`` whose factors are at most twice ``n^{1/d}``.

    ``factorize(784, 4) == (4, 4, 7, 7)``, ``factorize(625, 4) == (5, 5, 5, 5)``.
    """
    if n < 1 or d < 1:
        raise ModelError(f"cannot factorize {n} into {d} modes")
    target = 2 * n ** (1 / d)
    best = _best_factorization(n, d)
    if max(best) <= max(target, 2):
        return best
    for cand in range(n + 1, int(n * (1 + slack)) + 2):
        modes = _best_factorization(cand, d)
        if max(modes) <= target:
            return modes
    return best


def check_modes(in_modes: tuple[int, ...], out_modes: tuple[int, ...], n: int, m: int) -> None:
    if len(in_modes) != len(out_modes):
        raise ModelError(
            f"in_modes {list(in_modes)} and out_modes {list(out_modes)} must have the same length"
        )
    if math.prod(in_modes) < n or math.prod(out_modes) < m:
        raise ModelError(
            f"modes {list(out_modes)} × {list(in_modes)} (products {math.prod(out_modes)} × "
            f"{math.prod(in_modes)}) cannot hold a {m} × {n} weight"
        )


def modes_for(
    dense_in: int, dense_out: int, config: Any
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output modes from a config (given ones checked, else factorized in ``d``)."""
    in_modes = getattr(config, "in_modes", None)
    out_modes = getattr(config, "out_modes", None)
    d = getattr(config, "d", None) or len(in_modes or out_modes or ()) or 3
    in_modes = tuple(in_modes) if in_modes else factorize(dense_in, d)
    out_modes = tuple(out_modes) if out_modes else factorize(dense_out, len(in_modes))
    check_modes(in_modes, out_modes, dense_in, dense_out)
    return in_modes, out_modes


def weight_tensor(weight: torch.Tensor, in_modes: tuple[int, ...], out_modes: tuple[int, ...]):
    """The ``M × N`` weight, zero-padded, as the tensor ``(m_1·n_1) × … × (m_d·n_d)``."""
    d = len(in_modes)
    M, N = math.prod(out_modes), math.prod(in_modes)
    W = F.pad(weight.detach(), (0, N - weight.shape[1], 0, M - weight.shape[0]))
    W = W.reshape(*out_modes, *in_modes)
    order = [i for k in range(d) for i in (k, d + k)]
    return W.permute(order).reshape([m * n for m, n in zip(out_modes, in_modes, strict=False)])


class FactorizedLinear(DecomposedLinear):
    """Base of linear layers stored as a tensor network over factorized modes.

    It owns the shape, modes, ranks and bias; subclasses register their tensors in
    :meth:`_init_factors` and define :meth:`factors` (the tensors) and :meth:`factor_indices`
    (their einsum indices, given the letters of the input and output modes).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        in_modes: Any,
        out_modes: Any,
        ranks: Any,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        **factor_spec: Any,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.in_modes, self.out_modes = tuple(in_modes), tuple(out_modes)
        check_modes(self.in_modes, self.out_modes, in_features, out_features)
        factory = {"device": device, "dtype": dtype}
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None
        self.ranks = tuple(int(r) for r in ranks)
        self._plans: dict[tuple[int, ...], ContractionPlan] = {}
        self._init_factors(factory, **factor_spec)

    def _init_factors(self, factory: dict[str, Any], **factor_spec: Any) -> None:
        """Register the factor tensors (zeros; ``factory``: device and dtype)."""
        raise NotImplementedError

    def factor_spec(self) -> dict[str, Any]:
        """JSON-able keyword arguments of :meth:`_init_factors`."""
        return {}

    @classmethod
    def from_factors(
        cls: type[FL],
        dense: nn.Linear,
        in_modes: Any,
        out_modes: Any,
        ranks: Any,
        factors: Sequence[torch.Tensor],
        **factor_spec: Any,
    ) -> FL:
        """The layer standing for ``dense`` (its device and dtype) with these factors (each
        reshaped to its tensor) and ``dense``'s bias."""
        W = dense.weight
        shape = (W.shape[1], W.shape[0], in_modes, out_modes, ranks, dense.bias is not None)
        layer = cls(*shape, W.device, W.dtype, **factor_spec)
        return layer.load_factors(factors, dense.bias)

    @torch.no_grad()
    def load_factors(self: FL, factors: Sequence[torch.Tensor], bias: torch.Tensor | None) -> FL:
        """Copy ``factors`` (in :meth:`factors` order) and ``bias`` into this layer."""
        for p, f in zip(self.factors(), factors, strict=True):
            p.copy_(f.reshape(p.shape))
        if bias is not None:
            self.bias.copy_(bias)
        return self

    @property
    def d(self) -> int:
        return len(self.in_modes)

    def factors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def factor_indices(self, n_idx: list[str], m_idx: list[str], skip: str) -> list[str]:
        raise NotImplementedError

    def _equation(self, with_input: bool) -> str:
        from modelzip.decompose._ops import letters

        idx = letters(2 * self.d + 1)
        batch, n_idx, m_idx = idx[0], idx[1 : self.d + 1], idx[self.d + 1 :]
        terms = self.factor_indices(n_idx, m_idx, "".join(idx))
        if with_input:
            return f"{batch}{''.join(n_idx)},{','.join(terms)}->{batch}{''.join(m_idx)}"
        return f"{','.join(terms)}->{''.join(m_idx)}{''.join(n_idx)}"

    def plan(self, rows: int) -> ContractionPlan:
        """The contraction order for ``rows`` input vectors (cached per row count)."""
        key = (rows,)
        if key not in self._plans:
            shapes = [(rows, *self.in_modes)] + [tuple(f.shape) for f in self.factors()]
            self._plans[key] = ContractionPlan(self._equation(True), shapes)
        return self._plans[key]

    def forward(self, x: torch.Tensor, contract: Contract | None = None) -> torch.Tensor:
        """``W x + b``; ``contract(plan, operands)`` evaluates the planned contraction another way
        (the ONNX export's matmuls), by default opt_einsum does. Reshapes keep the batch as
        ``-1``, so that a traced graph takes any batch size."""
        lead = x.shape[:-1]
        plan = self.plan(rows_of(x, self.in_features))
        x = x.reshape(-1, self.in_features)
        padded_in = math.prod(self.in_modes)
        if padded_in != self.in_features:
            x = F.pad(x, (0, padded_in - self.in_features))
        operands = [x.reshape(-1, *self.in_modes), *self.factors()]
        y = plan(*operands) if contract is None else contract(plan, operands)
        y = y.reshape(-1, math.prod(self.out_modes))[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def weight(self) -> torch.Tensor:
        """The dense ``M × N`` weight (for :meth:`to_dense` and tests only)."""
        W = torch.einsum(self._equation(False), *self.factors())
        W = W.reshape(math.prod(self.out_modes), math.prod(self.in_modes))
        return W[: self.out_features, : self.in_features]

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "in_modes": list(self.in_modes),
            "out_modes": list(self.out_modes),
            "bias": self.bias is not None,
            "ranks": list(self.ranks),
            **self.factor_spec(),
        }

    def macs_per_row(self, rows: int = 1) -> float:
        """MACs of the planned contraction divided by ``rows``."""
        return self.plan(rows).macs / rows

    def workloads_for_rows(self, name: str, rows: int) -> list[Workload]:
        """The planned chain of small matmuls for ``rows`` input vectors."""
        bits = self.factors()[0].element_size() * 8
        steps = self.plan(max(rows, 1)).steps
        return matmul_workloads(name, type(self).__name__, steps, self.param_count(), bits)
