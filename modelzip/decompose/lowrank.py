"""Low-rank matrix decompositions: truncated SVD of a Linear weight, and of a conv kernel
reshaped to a matrix (channel decomposition, and the spatial one of Jaderberg et al. 2014).

By Eckart–Young the rank-``r`` truncated SVD is the best rank-``r`` approximation in the
Frobenius norm, with error ``sqrt(Σ_{i>r} σ_i²)``; folding ``S`` into the factors gives the
full-rank decomposition ``W ≈ W₁H₁`` with the same error.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.module import CompressedModule, dense_linear, register_layer
from modelzip.core.workload import Workload
from modelzip.decompose._ops import conv_chain_workloads, copy_bias, linear_workload, rows_of
from modelzip.decompose.rank import matrix_rank


def truncated_svd(
    matrix: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U[:, :r], S[:r], Vᵀ[:r]`` of ``matrix``, computed in float64 on its device."""
    U, S, Vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    return U[:, :rank], S[:rank], Vh[:rank]


def _svd_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.detach().double())


@register_layer
class LowRankLinear(CompressedModule):
    """``y = U·diag(S)·Vᵀ·x + b``: a Linear layer as two thin products.

    Parameters
    ----------
    in_features, out_features:
        ``n`` and ``m`` of the dense ``m × n`` weight.
    rank:
        ``r``.
    bias:
        Whether the layer adds a bias.
    singular_values:
        Keep ``S`` as its own vector (truncated SVD, ``r·(m + n + 1)`` numbers) rather than folded
        into the factors (``W ≈ W₁H₁`` with ``W₁ = U·S^½``, ``H₁ = S^½·Vᵀ``, ``r·(m + n)``).

    Parameter count: ``r·(m + n) [+ r] [+ m]``; MACs per row ``r·(m + n)`` against ``m·n``.
    """

    onnx_export = "traced"

    stands_for = "Linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        singular_values: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.factor_in = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.singular_values = nn.Parameter(torch.ones(rank, **kw)) if singular_values else None
        self.factor_out = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None

    @classmethod
    def from_dense(
        cls,
        dense: nn.Linear,
        config: Any = None,
        *,
        rank: int | None = None,
        singular_values: bool | None = None,
    ) -> LowRankLinear:
        W = dense.weight
        m, n = W.shape
        if singular_values is None:
            singular_values = not getattr(config, "fold_singular_values", True)
        if rank is None:
            per_rank = m + n + (1 if singular_values else 0)
            rank = matrix_rank(config, _svd_values(W), m, n, per_rank=per_rank, what="Linear")
        else:
            matrix_rank(_Exact(rank), W.new_zeros(1), m, n, what="Linear")
        U, S, Vh = truncated_svd(W, rank)
        layer = cls(n, m, rank, dense.bias is not None, singular_values, W.device, W.dtype)
        with torch.no_grad():
            if singular_values:
                layer.factor_out.copy_(U)
                layer.singular_values.copy_(S)
                layer.factor_in.copy_(Vh)
            else:
                root = S.sqrt()
                layer.factor_out.copy_(U * root)
                layer.factor_in.copy_(root[:, None] * Vh)
        layer.bias = copy_bias(dense.bias)
        return layer

    def weight(self) -> torch.Tensor:
        """The dense ``m × n`` product (for :meth:`to_dense` and tests only)."""
        inner = self.factor_in
        if self.singular_values is not None:
            inner = self.singular_values[:, None] * inner
        return self.factor_out @ inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.factor_in)
        if self.singular_values is not None:
            h = h * self.singular_values
        return F.linear(h, self.factor_out, self.bias)

    def to_dense(self) -> nn.Linear:
        return dense_linear(self.weight(), self.bias)

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "bias": self.bias is not None,
            "singular_values": self.singular_values is not None,
        }

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        return self.workloads_for_rows(name, rows_of(inputs[0], self.in_features))

    def workloads_for_rows(self, name: str, rows: int) -> list[Workload]:
        """The two thin products for ``rows`` input vectors."""
        r, n, m = self.rank, self.in_features, self.out_features
        first_params = r * n + (r if self.singular_values is not None else 0)
        return [
            linear_workload(f"{name}:in", type(self).__name__, rows, n, r, first_params),
            linear_workload(
                f"{name}:out", type(self).__name__, rows, r, m, self.param_count() - first_params
            ),
        ]


class _Exact:
    def __init__(self, rank: int) -> None:
        self.rank = rank


def _check_conv(conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise ModelError(f"grouped convolution (groups={conv.groups}) cannot be decomposed here")


class _ConvChain(CompressedModule):
    """A conv layer replaced by a chain of small convs held as submodules."""

    onnx_export = "traced"

    stands_for = "Conv2d"

    parts: tuple[str, ...] = ()

    def _convs(self) -> list[tuple[str, nn.Conv2d]]:
        return [(p, getattr(self, p)) for p in self.parts]

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        return conv_chain_workloads(name, self._convs(), inputs[0])

    def _dense_conv(self, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            1,
            bias is not None,
            self.padding_mode,
            weight.device,
            weight.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(weight)
            if bias is not None:
                dense.bias.copy_(bias)
        return dense

    def _conv_spec(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "padding_mode": self.padding_mode,
            "bias": self.bias_enabled,
        }

    def _set_conv(self, in_channels, out_channels, kernel_size, stride, padding, dilation, mode):
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding = padding if isinstance(padding, str) else pair(padding)
        self.dilation, self.padding_mode = pair(dilation), mode


def _conv_args(conv: nn.Conv2d) -> dict[str, Any]:
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "padding_mode": conv.padding_mode,
        "bias": conv.bias is not None,
    }


@register_layer
class ChannelLowRankConv2d(_ConvChain):
    """Channel decomposition: the ``O × (I·kh·kw)`` kernel matrix as a truncated SVD, run as a
    ``kh×kw`` conv to ``r`` channels, then a ``1×1`` conv to ``O`` channels.

    Parameter count: ``r·(I·kh·kw + O) [+ r] [+ O]``; MACs per output pixel ``r·(I·kh·kw + O)``
    against ``O·I·kh·kw``.
    """

    parts = ("first", "second")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        rank: int,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        padding_mode: str = "zeros",
        bias: bool = True,
        singular_values: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self._set_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode
        )
        self.rank, self.bias_enabled = rank, bias
        kw = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(
            in_channels,
            rank,
            kernel_size,
            stride,
            padding,
            dilation,
            bias=False,
            padding_mode=padding_mode,
            **kw,
        )
        self.singular_values = nn.Parameter(torch.ones(rank, **kw)) if singular_values else None
        self.second = nn.Conv2d(rank, out_channels, 1, bias=bias, **kw)

    @classmethod
    def from_dense(
        cls, dense: nn.Conv2d, config: Any = None, *, rank: int | None = None
    ) -> ChannelLowRankConv2d:
        _check_conv(dense)
        W = dense.weight
        O = W.shape[0]
        matrix = W.reshape(O, -1)
        m, n = matrix.shape
        explicit = not getattr(config, "fold_singular_values", True)
        cfg = _Exact(rank) if rank is not None else config
        r = matrix_rank(cfg, _svd_values(matrix), m, n, per_rank=m + n + explicit, what="Conv2d")
        U, S, Vh = truncated_svd(matrix, r)
        layer = cls(
            **_conv_args(dense), rank=r, singular_values=explicit, device=W.device, dtype=W.dtype
        )
        with torch.no_grad():
            if explicit:
                layer.singular_values.copy_(S)
                first, second = Vh, U
            else:
                first, second = S.sqrt()[:, None] * Vh, U * S.sqrt()
            layer.first.weight.copy_(first.reshape(r, *W.shape[1:]))
            layer.second.weight.copy_(second.reshape(O, r, 1, 1))
            if dense.bias is not None:
                layer.second.bias.copy_(dense.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.singular_values is not None:
            h = h * self.singular_values[:, None, None]
        return self.second(h)

    def to_dense(self) -> nn.Conv2d:
        first = self.first.weight.flatten(1)
        if self.singular_values is not None:
            first = self.singular_values[:, None] * first
        weight = (self.second.weight.flatten(1) @ first).reshape(
            self.out_channels, self.in_channels, *self.kernel_size
        )
        return self._dense_conv(weight, self.second.bias)

    def spec(self) -> dict[str, Any]:
        return {
            **self._conv_spec(),
            "rank": self.rank,
            "singular_values": self.singular_values is not None,
        }


@register_layer
class SpatialLowRankConv2d(_ConvChain):
    """Spatial decomposition of Jaderberg, Vedaldi, Zisserman 2014 ("Speeding up convolutional
    neural networks with low rank expansions", scheme 2): a ``kh×1`` conv from ``I`` to ``r``
    channels followed by a ``1×kw`` conv from ``r`` to ``O`` channels.

    The kernel ``W[o, i, y, x]`` is read as the ``(I·kh) × (kw·O)`` matrix ``M[(i, y), (x, o)]``;
    its truncated SVD ``M ≈ A·B`` gives the vertical filters (``A``) and the horizontal ones
    (``B``), which is optimal in the Frobenius norm of the kernel (the data-free variant).

    Parameter count: ``r·(I·kh + O·kw) [+ O]``; full rank ``min(I·kh, O·kw)`` is exact.
    """

    parts = ("vertical", "horizontal")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        rank: int,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        padding_mode: str = "zeros",
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self._set_conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode
        )
        self.rank, self.bias_enabled = rank, bias
        kh, kw = self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation
        pad = self.padding
        vpad = pad if isinstance(pad, str) else (pad[0], 0)
        hpad = pad if isinstance(pad, str) else (0, pad[1])
        kwargs = {"device": device, "dtype": dtype, "padding_mode": padding_mode}
        self.vertical = nn.Conv2d(
            in_channels, rank, (kh, 1), (sh, 1), vpad, (dh, 1), bias=False, **kwargs
        )
        self.horizontal = nn.Conv2d(
            rank, out_channels, (1, kw), (1, sw), hpad, (1, dw), bias=bias, **kwargs
        )

    @classmethod
    def from_dense(
        cls, dense: nn.Conv2d, config: Any = None, *, rank: int | None = None
    ) -> SpatialLowRankConv2d:
        _check_conv(dense)
        W = dense.weight
        O, I, kh, kw = W.shape
        matrix = W.permute(1, 2, 3, 0).reshape(I * kh, kw * O)
        m, n = matrix.shape
        cfg = _Exact(rank) if rank is not None else config
        r = matrix_rank(cfg, _svd_values(matrix), m, n, what="Conv2d (spatial)")
        U, S, Vh = truncated_svd(matrix, r)
        layer = cls(**_conv_args(dense), rank=r, device=W.device, dtype=W.dtype)
        with torch.no_grad():
            A, B = U * S.sqrt(), S.sqrt()[:, None] * Vh
            layer.vertical.weight.copy_(A.T.reshape(r, I, kh, 1))
            layer.horizontal.weight.copy_(B.reshape(r, kw, O).permute(2, 0, 1).unsqueeze(2))
            if dense.bias is not None:
                layer.horizontal.bias.copy_(dense.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.horizontal(self.vertical(x))

    def to_dense(self) -> nn.Conv2d:
        A = self.vertical.weight[..., 0]  # r, I, kh
        B = self.horizontal.weight[:, :, 0, :]  # O, r, kw
        weight = torch.einsum("riy,orx->oiyx", A, B)
        return self._dense_conv(weight, self.horizontal.bias)

    def spec(self) -> dict[str, Any]:
        return {**self._conv_spec(), "rank": self.rank}
