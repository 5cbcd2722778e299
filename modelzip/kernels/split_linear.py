"""A factorized linear layer (TT, HT, tensorized Tucker) run as two GEMMs over a cut of its modes.

Cutting the tensor network of ``W`` between modes ``h`` and ``h+1`` writes it as
``W[(i_L,i_R),(j_L,j_R)] = Σ_b L[i_L, j_L, b] · R[j_R, b, i_R]``, where ``b`` runs over the
indices the cut crosses (the TT rank ``r_h``; for an HT tree, the rank of the root's children).
The factor-only contractions that build ``L`` and ``R`` are paid once, here; each call then costs
``rows · (N_L·N_R·b·M_R + M_L·N_L·b·M_R)`` MACs in two large GEMMs with no transposes, where the
core-by-core contraction runs ``d`` small GEMMs, each followed by a strided copy. For a 4096²
TT-matrix over ``4⁶ × 4⁶`` at rank 8 the cut at the middle costs 4.2 M MACs per row, against
16.8 M dense and about 3.2 M for opt_einsum's MAC-minimal order; the GEMMs run near peak, the
small ones do not (``benchmarks/kernels.py``).

Rows are processed in chunks whose intermediate (``chunk · N_L·b·M_R`` floats) stays within a few
MB, so batch 256 runs from cache like batch 16. Pure PyTorch: it runs on any device.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.module import CompressedModule, dense_linear, register_layer

#: Floats in one chunk's intermediate (8 MB): within L2 + L3 of one core on these machines.
CHUNK_FLOATS = 1 << 21
#: A cut is searched over at most 2**MAX_FREE assignments of factors without mode indices.
MAX_FREE = 12


@dataclasses.dataclass(frozen=True)
class Cut:
    """Where to cut a factorized layer's network and what each side holds."""

    h: int
    left: tuple[int, ...]  # factor positions on the left of the cut
    right: tuple[int, ...]
    bond: tuple[str, ...]  # einsum letters the cut crosses
    bond_size: int
    macs_per_row: int


def _network(layer: Any) -> tuple[list[str], list[str], list[str], dict[str, int]]:
    from modelzip.decompose._ops import letters

    d = layer.d
    idx = letters(2 * d + 1)
    n_idx, m_idx = idx[1 : d + 1], idx[d + 1 :]
    terms = layer.factor_indices(n_idx, m_idx, "".join(idx))
    sizes: dict[str, int] = {}
    for term, factor in zip(terms, layer.factors(), strict=True):
        sizes.update(zip(term, (int(s) for s in factor.shape), strict=True))
    return n_idx, m_idx, terms, sizes


def plan_cut(layer: Any) -> Cut | None:
    """The cheapest cut of ``layer``'s network (a :class:`FactorizedLinear`), or None when every
    cut would store more than the dense weight."""
    n_idx, m_idx, terms, sizes = _network(layer)
    d, best = layer.d, None
    dense = math.prod(layer.in_modes) * math.prod(layer.out_modes)
    for h in range(1, d):
        left_modes, right_modes = set(m_idx[:h] + n_idx[:h]), set(m_idx[h:] + n_idx[h:])
        fixed: dict[int, bool] = {}
        free = []
        for i, term in enumerate(terms):
            on_left, on_right = bool(set(term) & left_modes), bool(set(term) & right_modes)
            if on_left and on_right:
                break  # a factor spans the cut (a Tucker core): no cut here
            if on_left or on_right:
                fixed[i] = on_left
            else:
                free.append(i)
        else:
            if len(free) > MAX_FREE:
                continue
            N_L, N_R = math.prod(layer.in_modes[:h]), math.prod(layer.in_modes[h:])
            M_L, M_R = math.prod(layer.out_modes[:h]), math.prod(layer.out_modes[h:])
            for sides in itertools.product((True, False), repeat=len(free)):
                side = {**fixed, **dict(zip(free, sides, strict=True))}
                left = tuple(i for i in range(len(terms)) if side[i])
                right = tuple(i for i in range(len(terms)) if not side[i])
                shared = set("".join(terms[i] for i in left)) & set(
                    "".join(terms[i] for i in right)
                )
                bond = tuple(sorted(shared))
                b = math.prod(sizes[c] for c in bond)
                if M_L * N_L * b + b * M_R * N_R >= dense:
                    continue
                macs = N_L * N_R * b * M_R + M_L * N_L * b * M_R
                if best is None or macs < best.macs_per_row:
                    best = Cut(h, left, right, bond, b, macs)
    return best


@register_layer
class SplitLinear(CompressedModule):
    """``y = W x`` with ``W`` held as two matrices ``L`` (``M_L × N_L·b``) and ``R``
    (``N_R × b·M_R``) over a cut of the modes; built by :meth:`from_factorized`."""

    onnx_export = (
        "refused: its forward runs the two GEMMs in row chunks into a preallocated output, which "
        "tracing would fix to one batch size; export the model before materializing it"
    )

    stands_for = "Linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        in_split: tuple[int, int],
        out_split: tuple[int, int],
        bond: int,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.in_split, self.out_split, self.bond = tuple(in_split), tuple(out_split), int(bond)
        (n_l, n_r), (m_l, m_r) = self.in_split, self.out_split
        self.left = nn.Parameter(torch.zeros(m_l, n_l * self.bond))
        self.right = nn.Parameter(torch.zeros(n_r, self.bond * m_r))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_factorized(cls, layer: Any, cut: Cut | None = None) -> SplitLinear:
        """Contract ``layer``'s factors on each side of ``cut`` (default :func:`plan_cut`)."""
        cut = cut or plan_cut(layer)
        if cut is None:
            raise ValueError(f"{type(layer).__name__} has no cut smaller than its dense weight")
        n_idx, m_idx, terms, _ = _network(layer)
        factors = layer.factors()
        h, bond = cut.h, "".join(cut.bond)
        with torch.no_grad():
            left = torch.einsum(
                ",".join(terms[i] for i in cut.left) + "->" + "".join(m_idx[:h] + n_idx[:h]) + bond,
                *(factors[i] for i in cut.left),
            )
            right = torch.einsum(
                ",".join(terms[i] for i in cut.right)
                + "->"
                + "".join(n_idx[h:])
                + bond
                + "".join(m_idx[h:]),
                *(factors[i] for i in cut.right),
            )
        in_split = (math.prod(layer.in_modes[:h]), math.prod(layer.in_modes[h:]))
        out_split = (math.prod(layer.out_modes[:h]), math.prod(layer.out_modes[h:]))
        new = cls(
            layer.in_features,
            layer.out_features,
            in_split,
            out_split,
            cut.bond_size,
            layer.bias is not None,
        ).to(device=left.device, dtype=left.dtype)
        with torch.no_grad():
            new.left.copy_(left.reshape(new.left.shape))
            new.right.copy_(right.reshape(new.right.shape))
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        return new

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> SplitLinear:
        raise NotImplementedError(
            "SplitLinear is an executable form of a TT/HT/Tucker layer; build it with "
            "from_factorized(layer) (materialize() does)"
        )

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "in_split": list(self.in_split),
            "out_split": list(self.out_split),
            "bond": self.bond,
            "bias": self.bias is not None,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SplitLinear:
        return cls(**{**spec, "in_split": tuple(spec["in_split"]),
                      "out_split": tuple(spec["out_split"])})  # fmt: skip

    def macs_per_row(self) -> int:
        (n_l, n_r), (m_l, m_r) = self.in_split, self.out_split
        return n_l * n_r * self.bond * m_r + m_l * n_l * self.bond * m_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (n_l, n_r), (m_l, m_r) = self.in_split, self.out_split
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if n_l * n_r != self.in_features:
            x2 = F.pad(x2, (0, n_l * n_r - self.in_features))
        rows = x2.shape[0]
        chunk = max(1, CHUNK_FLOATS // (n_l * self.bond * m_r))
        # out= has no autograd; with gradients on, the chunks are concatenated instead.
        grads = torch.is_grad_enabled() and (x2.requires_grad or self.left.requires_grad)
        out = None if grads else x2.new_empty(rows, m_l * m_r)
        parts = []
        for i in range(0, rows, chunk):
            xi = x2[i : i + chunk]
            r = xi.shape[0]
            t = (xi.reshape(r * n_l, n_r) @ self.right).view(r, n_l * self.bond, m_r)
            # L is shared by the batch: an expanded (stride-0) operand costs no copy.
            left = self.left.expand(r, -1, -1)
            if out is None:
                parts.append(torch.bmm(left, t).reshape(r, m_l * m_r))
            else:
                torch.bmm(left, t, out=out[i : i + r].view(r, m_l, m_r))
        y = (torch.cat(parts) if out is None else out)[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def weight(self) -> torch.Tensor:
        (n_l, n_r), (m_l, m_r) = self.in_split, self.out_split
        left = self.left.reshape(m_l, n_l, self.bond)
        right = self.right.reshape(n_r, self.bond, m_r)
        W = torch.einsum("ajb,kbc->acjk", left, right).reshape(m_l * m_r, n_l * n_r)
        return W[: self.out_features, : self.in_features]

    def to_dense(self) -> nn.Linear:
        return dense_linear(self.weight(), self.bias)


__all__ = ["CHUNK_FLOATS", "Cut", "SplitLinear", "plan_cut"]
