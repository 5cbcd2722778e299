"""Tucker decompositions: Tucker-2 of a conv kernel (Kim et al. 2016) and the tensorized Tucker
linear layer. The decompositions themselves are TensorLy's (HOOI, SVD-initialised)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
from tensorly.decomposition import partial_tucker, tucker
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.module import register_layer
from modelzip.decompose._ops import letters
from modelzip.decompose.conv_chain import ConvChain, Pieces
from modelzip.decompose.factorized import (
    FactorizedLinear,
    modes_for,
    tensorly_torch,
    weight_tensor,
)
from modelzip.decompose.rank import (
    check_rank,
    rank_for_energy,
    scale_ranks,
    tucker2_vbmf_ranks,
    unfolding_ranks,
)


def tucker2_params(O: int, I: int, kh: int, kw: int, r_out: int, r_in: int) -> int:
    """Weights of a Tucker-2 conv: ``I·R_in + R_in·R_out·kh·kw + R_out·O``."""
    return I * r_in + r_in * r_out * kh * kw + r_out * O


def tucker2_ranks(weight: torch.Tensor, config: Any, what: str = "Conv2d") -> tuple[int, int]:
    """(R_out, R_in) from a config: ``ranks``, ``rank`` (both modes, capped at each mode),
    ``energy`` (per unfolding), ``rank_fraction`` or, by default, ``vbmf``."""
    O, I, kh, kw = weight.shape
    ranks = getattr(config, "ranks", None)
    rank = getattr(config, "rank", None)
    energy = getattr(config, "energy", None)
    fraction = getattr(config, "rank_fraction", None)
    if ranks is not None:
        if len(ranks) != 2:
            raise ModelError(f"{what}: Tucker-2 needs 2 ranks (output, input), got {list(ranks)}")
        return check_rank(ranks[0], O, f"{what} output rank"), check_rank(
            ranks[1], I, f"{what} input rank"
        )
    if rank is not None:
        return min(rank, O), min(rank, I)
    if energy is not None:
        s0 = torch.linalg.svdvals(weight.detach().double().reshape(O, -1))
        s1 = torch.linalg.svdvals(weight.detach().double().transpose(0, 1).reshape(I, -1))
        return rank_for_energy(s0, energy), rank_for_energy(s1, energy)
    if fraction is not None:
        budget = fraction * O * I * kh * kw
        r = scale_ranks((O, I), lambda r: tucker2_params(O, I, kh, kw, *r), budget)
        return r[0], r[1]
    return tucker2_vbmf_ranks(weight)


@register_layer
class Tucker2Conv2d(ConvChain):
    """Tucker-2 conv of Kim et al., "Compression of deep convolutional neural networks for fast
    and low power mobile applications", ICLR 2016.

    ``W ≈ G ×₁ U_out ×₂ U_in`` on the two channel modes, run as a ``1×1`` conv ``I → R_in``
    (``U_inᵀ``), a ``kh×kw`` conv ``R_in → R_out`` (the core ``G``, with the original stride,
    padding and dilation) and a ``1×1`` conv ``R_out → O`` (``U_out``, with the bias).

    Parameter count: ``I·R_in + R_in·R_out·kh·kw + R_out·O [+ O]``.
    """

    parts = ("first", "core", "last")

    def _init_chain(self, new: Pieces, ranks: Any) -> None:
        self.ranks = r_out, r_in = int(ranks[0]), int(ranks[1])
        self.first = new.pointwise(self.in_channels, r_in)
        self.core = new.conv(self.geometry.with_channels(r_in, r_out))
        self.last = new.pointwise(r_out, self.out_channels, self.bias_enabled)

    def chain_spec(self) -> dict[str, Any]:
        return {"ranks": list(self.ranks)}

    @classmethod
    def from_dense(
        cls, dense: nn.Conv2d, config: Any = None, *, ranks: tuple[int, int] | None = None
    ) -> Tucker2Conv2d:
        W = dense.weight
        ranks = tucker2_ranks(W, config if ranks is None else SimpleNamespace(ranks=tuple(ranks)))
        r_out, r_in = ranks
        n_iter = getattr(config, "n_iter_max", 10)
        with tensorly_torch():
            (core, (U_out, U_in)), _ = partial_tucker(
                W.detach().double(), rank=[r_out, r_in], modes=[0, 1], n_iter_max=n_iter
            )
        layer = cls.like(dense, ranks)
        with torch.no_grad():
            layer.first.weight.copy_(U_in.T[:, :, None, None])
            layer.core.weight.copy_(core)
            layer.last.weight.copy_(U_out[:, :, None, None])
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    def kernel(self) -> torch.Tensor:
        return torch.einsum(
            "abyx,oa,bi->oiyx",
            self.core.weight,
            self.last.weight[:, :, 0, 0],
            self.first.weight[:, :, 0, 0],
        )


@register_layer
class TuckerLinear(FactorizedLinear):
    """Tensorized Tucker linear layer: ``W`` (``M × N``, ``M = ∏m_k``, ``N = ∏n_k``) reshaped to
    the ``m₁n₁ × … × m_dn_d`` tensor and Tucker-decomposed, ``W ≈ G ×₁ U₁ ⋯ ×_d U_d``.

    Factors ``U_k`` are stored as ``m_k × n_k × r_k``, the core ``G`` as ``r₁ × … × r_d``.
    Parameter count: ``Σ_k m_k·n_k·r_k + ∏_k r_k [+ M]``, i.e. ``O(d·m·n·r + r^d)``.
    """

    onnx_export = "converter:matmul_factorized"
    executable_forms = ("dense", "two_gemm_cut")
    factor_weights = True

    def _init_factors(self, factory: dict[str, Any]) -> None:
        if len(self.ranks) != self.d:
            raise ModelError(f"TuckerLinear needs {self.d} ranks, got {list(self.ranks)}")
        self.tucker_factors = nn.ParameterList(
            nn.Parameter(torch.zeros(m, n, r, **factory))
            for m, n, r in zip(self.out_modes, self.in_modes, self.ranks, strict=True)
        )
        self.core = nn.Parameter(torch.zeros(*self.ranks, **factory))

    @classmethod
    def from_dense(cls, dense: nn.Linear, config: Any = None, *, ranks: Any = None) -> TuckerLinear:
        W = dense.weight
        in_modes, out_modes = modes_for(W.shape[1], W.shape[0], config)
        sizes = [m * n for m, n in zip(out_modes, in_modes, strict=False)]
        ranks = ranks if ranks is not None else getattr(config, "ranks", None)
        if ranks is not None:
            if len(ranks) != len(sizes):
                raise ModelError(
                    f"Linear: tensorized Tucker needs {len(sizes)} ranks, got {list(ranks)}"
                )
            ranks = [
                check_rank(r, s, f"Linear Tucker mode {k}")
                for k, (r, s) in enumerate(zip(ranks, sizes, strict=False))
            ]
        elif getattr(config, "rank", None) is not None:
            total = math.prod(sizes)
            ranks = [min(config.rank, s, total // s) for s in sizes]
        elif getattr(config, "energy", None) is not None:  # HOSVD: each mode's own spectrum
            tensor = weight_tensor(W.double(), in_modes, out_modes)
            ranks = unfolding_ranks(tensor, [[k] for k in range(len(sizes))], config.energy)
        else:
            fraction = getattr(config, "rank_fraction", None) or 0.1
            ranks = scale_ranks(
                sizes,
                lambda r: sum(s * q for s, q in zip(sizes, r, strict=False)) + math.prod(r),
                fraction * W.numel(),
            )
        with tensorly_torch():
            core, factors = tucker(
                weight_tensor(W.double(), in_modes, out_modes), rank=list(ranks), n_iter_max=10
            )
        return cls.from_factors(dense, in_modes, out_modes, ranks, [*factors, core])

    def factors(self) -> list[torch.Tensor]:
        return [*self.tucker_factors, self.core]

    def factor_indices(self, n_idx: list[str], m_idx: list[str], skip: str) -> list[str]:
        r_idx = letters(self.d, skip)
        terms = [m + n + r for m, n, r in zip(m_idx, n_idx, r_idx, strict=False)]
        return [*terms, "".join(r_idx)]
