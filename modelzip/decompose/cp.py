"""CP-decomposed convolution of Lebedev et al. 2015, with TensorLy's CP-ALS."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace
from typing import Any

import torch
from tensorly.decomposition import parafac
from torch import nn

from modelzip.core.module import register_layer
from modelzip.decompose.conv_chain import ConvChain, Pieces, separable
from modelzip.decompose.factorized import tensorly_torch
from modelzip.decompose.rank import check_rank


def cp_conv_params(O: int, I: int, kh: int, kw: int, rank: int) -> int:
    """Weights of a CP conv: ``R·(I + kh + kw + O)``."""
    return rank * (I + kh + kw + O)


def exact_rank(shape: tuple[int, ...]) -> int:
    """A rank at which every tensor of this shape has an exact CP decomposition: the product of
    all modes but the largest (one term per fiber along the largest mode)."""
    return math.prod(shape) // max(shape)


def exact_cp(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The exact CP factors of rank :func:`exact_rank`: the fibers along the largest mode, and
    one-hot columns selecting each fiber's position in the other modes."""
    big = max(range(tensor.dim()), key=lambda k: tensor.shape[k])
    others = [k for k in range(tensor.dim()) if k != big]
    fibers = tensor.permute(big, *others).reshape(tensor.shape[big], -1)
    grids = torch.meshgrid(*(torch.arange(tensor.shape[k]) for k in others), indexing="ij")
    factors: list[torch.Tensor] = [fibers]
    for k, grid in zip(others, grids, strict=False):
        onehot = torch.zeros(tensor.shape[k], fibers.shape[1], dtype=tensor.dtype)
        onehot[grid.reshape(-1), torch.arange(fibers.shape[1])] = 1
        factors.append(onehot.to(tensor.device))
    order = [big, *others]
    return [factors[order.index(k)] for k in range(tensor.dim())]


def cp_rank(weight: torch.Tensor, config: Any, what: str = "Conv2d") -> int:
    """The CP rank a config asks for: ``rank`` (capped at :func:`exact_rank`, where the exact
    decomposition is built instead of running ALS) or ``rank_fraction`` (default 0.25) of the
    kernel's parameters."""
    O, I, kh, kw = weight.shape
    rank = getattr(config, "rank", None)
    if rank is not None:
        return min(check_rank(rank, 10**12, what), exact_rank((O, I, kh, kw)))
    fraction = getattr(config, "rank_fraction", None) or 0.25
    return max(1, int(fraction * O * I * kh * kw // (I + kh + kw + O)))


def _cp_als(tensor: torch.Tensor, rank: int, n_iter: int, init: str) -> list[torch.Tensor]:
    """CP-ALS factors of ``rank`` columns.

    ALS solves normal equations that are singular when the tensor's CP rank is below ``rank``
    (a zero, constant or rank-one kernel; found by tests/reliability): the solve raises or
    returns Inf/NaN. The rank is then lowered until ALS gives finite factors, which are padded
    with zero columns; a zero tensor gets zero factors.
    """
    for r in range(rank, 0, -1):
        try:
            with tensorly_torch(), warnings.catch_warnings():
                # TensorLy pads the SVD initialisation when R exceeds a mode, and says so.
                warnings.simplefilter("ignore", UserWarning)
                weights, factors = parafac(
                    tensor, rank=r, n_iter_max=n_iter, init=init, random_state=0, tol=1e-8
                )
        except torch.linalg.LinAlgError:
            continue
        factors = [factors[0] * weights, *factors[1:]]  # CP-ALS may leave scales in weights
        if not all(bool(torch.isfinite(f).all()) for f in factors):
            continue  # a nearly singular solve gave Inf/NaN instead of raising (constant kernels)
        return [_pad_columns(f, rank) for f in _balanced(factors)]
    return [torch.zeros(n, rank, dtype=tensor.dtype, device=tensor.device) for n in tensor.shape]


def _balanced(factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same CP tensor with every component's norm split equally over its factors.

    ALS leaves the scale of each component spread arbitrarily: on a constant kernel one factor
    held 3e19 and another 5e-35 (tests/reliability), and the separable convolution's float32
    intermediate activations overflowed although the product was fine.
    """
    norms = torch.stack([f.norm(dim=0) for f in factors])  # (modes, rank)
    target = norms.prod(dim=0) ** (1.0 / len(factors))
    scale = torch.where(norms > 0, target / torch.where(norms > 0, norms, 1), 0)
    return [f * scale[k] for k, f in enumerate(factors)]


def _pad_columns(factor: torch.Tensor, rank: int) -> torch.Tensor:
    """``factor`` with zero columns appended up to ``rank``."""
    extra = rank - factor.shape[1]
    return torch.cat([factor, factor.new_zeros(factor.shape[0], extra)], dim=1)


@register_layer
class CPConv2d(ConvChain):
    """CP conv of Lebedev et al., "Speeding-up convolutional neural networks using fine-tuned
    CP-decomposition", ICLR 2015.

    ``W[o, i, y, x] ≈ Σ_r A_out[o, r]·A_in[i, r]·A_y[y, r]·A_x[x, r]``, run as a ``1×1`` conv
    ``I → R``, a depthwise ``kh×1`` conv, a depthwise ``1×kw`` conv (stride, padding and dilation
    split between them) and a ``1×1`` conv ``R → O`` with the bias.

    Parameter count: ``R·(I + kh + kw + O) [+ O]``.
    """

    parts = ("first", "vertical", "horizontal", "last")

    def _init_chain(self, new: Pieces, rank: int) -> None:
        self.rank = r = int(rank)
        vertical, horizontal = separable(self.geometry)
        self.first = new.pointwise(self.in_channels, r)
        self.vertical = new.conv(vertical.with_channels(r, r, groups=r))
        self.horizontal = new.conv(horizontal.with_channels(r, r, groups=r))
        self.last = new.pointwise(r, self.out_channels, self.bias_enabled)

    def chain_spec(self) -> dict[str, Any]:
        return {"rank": self.rank}

    @classmethod
    def from_dense(
        cls, dense: nn.Conv2d, config: Any = None, *, rank: int | None = None
    ) -> CPConv2d:
        W = dense.weight
        r = cp_rank(W, config if rank is None else SimpleNamespace(rank=rank))
        if r == exact_rank(tuple(W.shape)):
            A_out, A_in, A_y, A_x = exact_cp(W.detach().double())
        else:
            n_iter = getattr(config, "n_iter_max", 100)
            init = getattr(config, "init", "svd")
            A_out, A_in, A_y, A_x = _cp_als(W.detach().double(), r, n_iter, init)
        layer = cls.like(dense, r)
        with torch.no_grad():
            layer.first.weight.copy_(A_in.T[:, :, None, None])
            layer.vertical.weight.copy_(A_y.T[:, None, :, None])
            layer.horizontal.weight.copy_(A_x.T[:, None, None, :])
            layer.last.weight.copy_(A_out[:, :, None, None])
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))

    def kernel(self) -> torch.Tensor:
        return torch.einsum(
            "or,ri,ry,rx->oiyx",
            self.last.weight[:, :, 0, 0],
            self.first.weight[:, :, 0, 0],
            self.vertical.weight[:, 0, :, 0],
            self.horizontal.weight[:, 0, 0, :],
        )
