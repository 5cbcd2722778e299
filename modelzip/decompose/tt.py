"""Tensor-train layers: TT-linear (Novikov et al. 2015), TT-conv (Garipov et al. 2016) and the
TT embedding. The TT-SVD is TensorLy's (``tensor_train`` / ``tensor_train_matrix``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tensorly.decomposition import tensor_train, tensor_train_matrix
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.module import register_layer
from modelzip.core.workload import Workload
from modelzip.decompose._ops import ContractionPlan, letters, matmul_workloads
from modelzip.decompose.conv_chain import ConvChain, Pieces
from modelzip.decompose.factorized import (
    Contract,
    FactorizedLinear,
    modes_for,
    tensorly_torch,
    weight_tensor,
)
from modelzip.decompose.rank import check_rank, unfolding_ranks


def tt_params(sizes: Sequence[int], ranks: Sequence[int]) -> int:
    """Numbers in TT cores: ``Σ_k r_{k-1}·s_k·r_k`` (``s_k = m_k·n_k`` for a TT-matrix)."""
    return sum(ranks[k] * s * ranks[k + 1] for k, s in enumerate(sizes))


def tt_ranks(
    sizes: Sequence[int],
    config: Any,
    what: str,
    dense_params: int,
    extra: Callable[[list[int]], int] = lambda r: 0,
    tensor: torch.Tensor | None = None,
) -> list[int]:
    """TT ranks ``[1, r_1, …, r_{d-1}, 1]`` from a config.

    ``ranks`` (the ``d - 1`` inner ranks) are checked against the largest useful rank of each
    bond, ``min(∏_{j≤k} s_j, ∏_{j>k} s_j)``; a single ``rank`` is capped at each bond's
    limit; ``rank_fraction`` picks the largest uniform rank within that fraction of
    ``dense_params``; ``energy`` sizes each bond by the spectrum of ``tensor`` (the
    ``s_1 × … × s_d`` tensor being decomposed) unfolded there; the default is 8.
    """
    d = len(sizes)
    caps = [min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(d - 1)]
    energy = getattr(config, "energy", None)
    if energy is not None:
        if tensor is None:
            raise ModelError(f"{what}: the energy rule needs the tensor being decomposed")
        inner = unfolding_ranks(tensor, [range(k + 1) for k in range(d - 1)], energy)
        return [1, *(min(r, c) for r, c in zip(inner, caps, strict=True)), 1]
    ranks = getattr(config, "ranks", None)
    if ranks is not None:
        if len(ranks) != d - 1:
            raise ModelError(f"{what}: {d} TT cores need {d - 1} inner ranks, got {list(ranks)}")
        inner = [
            check_rank(r, c, f"{what} TT bond {k + 1}")
            for k, (r, c) in enumerate(zip(ranks, caps, strict=False))
        ]
        return [1, *inner, 1]

    def uniform(r: int) -> list[int]:
        return [1, *(min(r, c) for c in caps), 1]

    rank = getattr(config, "rank", None)
    if rank is not None:
        return uniform(rank)
    fraction = getattr(config, "rank_fraction", None)
    if fraction is None:
        return uniform(8)
    best = uniform(1)
    for r in range(1, max(caps, default=1) + 1):
        cand = uniform(r)
        if tt_params(sizes, cand) + extra(cand) > fraction * dense_params:
            break
        best = cand
    return best


def tt_matrix(
    weight: torch.Tensor,
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    config: Any,
    what: str,
    ranks: Any = None,
) -> tuple[list[torch.Tensor], list[int]]:
    """TT-matrix cores ``r_{k-1} × m_k × n_k × r_k`` of an ``out × in`` weight (TensorLy's
    TT-SVD) and their ranks; ``ranks`` (all ``d + 1``), else the config's rule, sizes them."""
    tensor = weight_tensor(weight.double(), in_modes, out_modes)
    if ranks is None:
        sizes = [m * n for m, n in zip(out_modes, in_modes, strict=True)]
        ranks = tt_ranks(sizes, config, what, weight.numel(), tensor=tensor)
    d = len(in_modes)
    tensor = tensor.reshape([s for mn in zip(out_modes, in_modes, strict=True) for s in mn])
    tensor = tensor.permute([2 * k for k in range(d)] + [2 * k + 1 for k in range(d)])
    with tensorly_torch():
        cores = tensor_train_matrix(tensor, rank=list(ranks))
    return cores, [c.shape[0] for c in cores] + [1]


class TTMatrix(FactorizedLinear):
    """A weight stored as a TT-matrix: cores ``G_k`` of shape ``r_{k-1} × m_k × n_k × r_k``."""

    def _init_factors(self, factory: dict[str, Any]) -> None:
        if len(self.ranks) != self.d + 1:
            raise ModelError(
                f"{type(self).__name__} needs {self.d + 1} ranks, got {list(self.ranks)}"
            )
        r = self.ranks
        self.tt_cores = nn.ParameterList(
            nn.Parameter(torch.zeros(r[k], m, n, r[k + 1], **factory))
            for k, (m, n) in enumerate(zip(self.out_modes, self.in_modes, strict=True))
        )

    def factors(self) -> list[torch.Tensor]:
        return list(self.tt_cores)

    def factor_indices(self, n_idx: list[str], m_idx: list[str], skip: str) -> list[str]:
        r_idx = letters(self.d + 1, skip)
        return [r_idx[k] + m_idx[k] + n_idx[k] + r_idx[k + 1] for k in range(self.d)]


@register_layer
class TTLinear(TTMatrix):
    """TT-linear layer of Novikov, Podoprikhin, Osokin, Vetrov, "Tensorizing neural networks",
    NeurIPS 2015: ``W((i₁,j₁),…,(i_d,j_d)) = G₁[i₁,j₁] ⋯ G_d[i_d,j_d]`` with cores ``G_k`` of
    shape ``r_{k-1} × m_k × n_k × r_k`` (``r₀ = r_d = 1``).

    Parameter count: ``Σ_k r_{k-1}·m_k·n_k·r_k [+ M]``; e.g. 784 → 625 with modes
    ``4·7·4·7 → 5·5·5·5`` at rank 4 stores 1,100 weights (+625 bias) instead of 490,000.
    """

    onnx_export = "converter:matmul_factorized"
    executable_forms = ("dense", "two_gemm_cut")
    factor_weights = True

    @classmethod
    def from_dense(cls, dense: nn.Linear, config: Any = None, *, ranks: Any = None) -> TTLinear:
        W = dense.weight
        in_modes, out_modes = modes_for(W.shape[1], W.shape[0], config)
        cores, ranks = tt_matrix(W, in_modes, out_modes, config, "Linear", ranks)
        return cls.from_factors(dense, in_modes, out_modes, ranks, cores)


@register_layer
class TTConv2d(ConvChain):
    """TT-conv layer after Garipov, Podoprikhin, Novikov, Vetrov, "Ultimate tensorization:
    compressing convolutional and FC layers alike", 2016.

    The kernel is a TT over ``(kh·kw), (s₁c₁), …, (s_dc_d)`` with ``O ≤ ∏s_k``, ``I ≤ ∏c_k``:
    the spatial core (``r₀`` filters of ``kh×kw``) is applied to every input channel as a conv
    with one input channel, then the channel cores ``r_{k-1} × s_k × c_k × r_k`` (``r_d = 1``)
    are contracted with the result at every output pixel.

    Parameter count: ``r₀·kh·kw + Σ_k r_{k-1}·s_k·c_k·r_k [+ O]``.
    """

    onnx_export = "converter:matmul_tt_conv2d"
    executable_forms = ("dense", "fused_tt_conv")

    parts = ("spatial",)
    # Its forward contracts the TT cores itself; the spatial piece stays its own business.
    compressible_parts = ()
    # A later weight quantizer codes the spatial kernel and the cores in place.
    factor_weights = True

    def _init_chain(self, new: Pieces, in_modes: Any, out_modes: Any, ranks: Any) -> None:
        self.in_modes, self.out_modes = tuple(in_modes), tuple(out_modes)
        self.ranks = r = tuple(int(rank) for rank in ranks)
        d = len(self.in_modes)
        if len(self.out_modes) != d or len(r) != d + 1:
            raise ModelError(f"TTConv2d needs {d} output modes and {d + 1} ranks")
        self.spatial = new.conv(self.geometry.with_channels(1, r[0]))
        self.tt_cores = nn.ParameterList(
            new.tensor(r[k], s, c, r[k + 1])
            for k, (s, c) in enumerate(zip(self.out_modes, self.in_modes, strict=True))
        )
        self.bias = new.tensor(self.out_channels) if self.bias_enabled else None
        self._plans: dict[tuple[int, ...], ContractionPlan] = {}

    def chain_spec(self) -> dict[str, Any]:
        return {
            "in_modes": list(self.in_modes),
            "out_modes": list(self.out_modes),
            "ranks": list(self.ranks),
        }

    def output_bias(self) -> torch.Tensor | None:
        return self.bias

    @classmethod
    def from_dense(cls, dense: nn.Conv2d, config: Any = None, *, ranks: Any = None) -> TTConv2d:
        W = dense.weight
        O, I, kh, kw = W.shape
        in_modes, out_modes = modes_for(I, O, config)
        d = len(in_modes)
        sizes = [kh * kw] + [s * c for s, c in zip(out_modes, in_modes, strict=False)]
        if ranks is not None:
            ranks = tuple(int(r) for r in ranks)
            ranks = (*ranks, 1) if len(ranks) == d else ranks
            if len(ranks) != d + 1 or ranks[-1] != 1 or min(ranks) < 1:
                raise ModelError(
                    f"TTConv2d.from_dense ranks={list(ranks)}: {d} mode pairs need {d} ranks ≥ 1 "
                    "(the spatial rank, then one per bond between channel cores), optionally "
                    "followed by the closing 1"
                )
        Op, Ip = math.prod(out_modes), math.prod(in_modes)
        T = F.pad(W.detach().double(), (0, 0, 0, 0, 0, Ip - I, 0, Op - O))
        T = T.reshape(*out_modes, *in_modes, kh * kw)
        T = T.permute([2 * d] + [i for k in range(d) for i in (k, d + k)]).reshape(sizes)
        if ranks is None:
            cfg_ranks = getattr(config, "ranks", None)
            if cfg_ranks is not None and len(cfg_ranks) == d:  # the spatial rank first
                cfg = type("R", (), {"ranks": cfg_ranks})()
                ranks = tt_ranks(sizes, cfg, "Conv2d", W.numel())[1:]
            else:
                ranks = tt_ranks(sizes, config, "Conv2d", W.numel(), tensor=T)[1:]
        with tensorly_torch():
            cores = tensor_train(T, rank=[1, *ranks])
        ranks = [c.shape[2] for c in cores]
        layer = cls.like(dense, in_modes, out_modes, ranks)
        with torch.no_grad():
            layer.spatial.weight.copy_(cores[0][0].T.reshape(ranks[0], 1, kh, kw))
            for p, c, s, ci in zip(layer.tt_cores, cores[1:], out_modes, in_modes, strict=False):
                p.copy_(c.reshape(c.shape[0], s, ci, c.shape[2]))
        return layer

    def _plan(self, batch: int, p: int, q: int) -> ContractionPlan:
        key = (batch, p, q)
        if key not in self._plans:
            d = len(self.in_modes)
            idx = letters(3 * d + 4)
            b, a, pp, qq = idx[:4]
            c_idx, s_idx, r_idx = idx[4 : 4 + d], idx[4 + d : 4 + 2 * d], idx[4 + 2 * d :]
            r_idx = [a, *r_idx[: d - 1], idx[-1]]
            terms = [r_idx[k] + s_idx[k] + c_idx[k] + r_idx[k + 1] for k in range(d)]
            eq = f"{b}{''.join(c_idx)}{a}{pp}{qq},{','.join(terms)}->{b}{''.join(s_idx)}{pp}{qq}"
            shapes = [(batch, *self.in_modes, self.ranks[0], p, q)] + [
                tuple(c.shape) for c in self.tt_cores
            ]
            self._plans[key] = ContractionPlan(eq, shapes)
        return self._plans[key]

    def forward(self, x: torch.Tensor, contract: Contract | None = None) -> torch.Tensor:
        """The conv; ``contract`` as in :meth:`FactorizedLinear.forward
        <modelzip.decompose.factorized.FactorizedLinear.forward>` (the batch reshaped as ``-1``)."""
        B, I, H, W = x.shape
        z = self.spatial(x.reshape(-1, 1, H, W))
        _, r0, P, Q = z.shape
        z = z.reshape(-1, I, r0, P, Q)
        Ip = math.prod(self.in_modes)
        if Ip != I:
            z = F.pad(z, (0, 0, 0, 0, 0, 0, 0, Ip - I))
        z = z.reshape(-1, *self.in_modes, r0, P, Q)
        plan = self._plan(int(B), int(P), int(Q))
        y = plan(z, *self.tt_cores) if contract is None else contract(plan, [z, *self.tt_cores])
        y = y.reshape(-1, math.prod(self.out_modes), P, Q)[:, : self.out_channels]
        return y if self.bias is None else y + self.bias[:, None, None]

    def kernel(self) -> torch.Tensor:
        """The dense ``O × I × kh × kw`` kernel (for :meth:`to_dense` and tests only)."""
        channel = self.tt_cores[0]
        for core in self.tt_cores[1:]:
            a, s, c, _ = channel.shape
            channel = torch.einsum("asct,tuev->asucev", channel, core)
            channel = channel.reshape(a, s * core.shape[1], c * core.shape[2], -1)
        channel = channel[..., 0][:, : self.out_channels, : self.in_channels]
        spatial = self.spatial.weight[:, 0]
        return torch.einsum("aoi,ayx->oiyx", channel, spatial)

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        x = inputs[0]
        B, I, H, W = x.shape
        spatial_in = torch.empty(B * I, 1, H, W, device="meta", dtype=x.dtype)
        first = super().workloads(name, (spatial_in,), None)
        P, Q = output.shape[-2:]
        steps = self._plan(B, P, Q).steps
        bits = self.spatial.weight.element_size() * 8
        rest = self.param_count() - self.spatial.weight.numel()
        return first + matmul_workloads(f"{name}:tt", type(self).__name__, steps, rest, bits)
