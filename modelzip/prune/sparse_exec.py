"""Executing pruned layers with sparse kernels, once sparsity pays.

A pruned weight ``W`` (``out × fan_in``) is stored in CSR (or BSR when its zeros form whole
``b_r × b_c`` blocks), and the layer computes ``y = (W · xᵀ)ᵀ + b`` with PyTorch's sparse-dense
matmul; a conv first unfolds its input (im2col) so that it is the same product. Below
``min_sparsity`` a sparse product is slower than a dense GEMM (index traffic, no SIMD over rows),
so the layer keeps a dense weight instead: measured on one CPU core, CSR breaks even with a dense
GEMM at about 75% sparsity (see ``benchmarks/prune.py``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.errors import ConfigError
from modelzip.core.module import CompressedModule, conv2d, dense_linear, load_dense, register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.prune.grains import block_density, matrix_view
from modelzip.prune.masked import _Masked

Mode = Literal["dense", "csr", "bsr"]


def choose_mode(weight: torch.Tensor, min_sparsity: float, block: tuple[int, int] = (4, 4)) -> Mode:
    """``bsr`` when the zeros form whole blocks, ``csr`` when sparse enough, else ``dense``."""
    w = matrix_view(weight)
    sparsity = 1.0 - int(torch.count_nonzero(w)) / max(w.numel(), 1)
    if sparsity < min_sparsity:
        return "dense"
    divides = w.shape[0] % block[0] == 0 and w.shape[1] % block[1] == 0
    if divides and block != (1, 1) and block_density(w != 0, block) == 1.0:
        return "bsr"
    return "csr"


class _SparseWeight(CompressedModule):
    """A weight held dense, as CSR or as BSR arrays (int32 indices), with the sparse product."""

    mode: Mode

    def _init_weight(self, shape: tuple[int, int], mode: Mode, nnz: int, block: tuple[int, int]):
        self.mode, self.block, self.nnz, self.matrix_shape = mode, tuple(block), nnz, shape
        if mode == "dense":
            self.register_buffer("weight", torch.zeros(shape))
        elif mode == "csr":
            self.register_buffer("crow", torch.zeros(shape[0] + 1, dtype=torch.int32))
            self.register_buffer("col", torch.zeros(nnz, dtype=torch.int32))
            self.register_buffer("values", torch.zeros(nnz))
        else:
            br, bc = block
            self.register_buffer("crow", torch.zeros(shape[0] // br + 1, dtype=torch.int32))
            self.register_buffer("col", torch.zeros(nnz, dtype=torch.int32))
            self.register_buffer("values", torch.zeros(nnz, br, bc))

    @torch.no_grad()
    def _set_weight(self, w: torch.Tensor) -> None:
        w = matrix_view(w.detach()).to(self.bias.device if self.bias is not None else w.device)
        if self.mode == "dense":
            self.weight.copy_(w)
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*beta state")
            sp = w.to_sparse_csr() if self.mode == "csr" else w.to_sparse_bsr(self.block)
        self.crow.copy_(sp.crow_indices())
        self.col.copy_(sp.col_indices())
        self.values.copy_(sp.values())

    def sparse_weight(self) -> torch.Tensor:
        make = torch.sparse_csr_tensor if self.mode == "csr" else torch.sparse_bsr_tensor
        return make(self.crow, self.col, self.values, self.matrix_shape, check_invariants=False)

    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_packed_state(state)
        if self.mode != "dense":
            # Indices read from a file are checked once, so a corrupt file fails here with an
            # error instead of reading out of bounds in every forward.
            make = torch.sparse_csr_tensor if self.mode == "csr" else torch.sparse_bsr_tensor
            try:
                make(self.crow, self.col, self.values, self.matrix_shape, check_invariants=True)
            except RuntimeError as e:
                raise ValueError(f"corrupt sparse weight: {e}") from None

    def dense_weight(self) -> torch.Tensor:
        if self.mode == "dense":
            return self.weight
        return self.sparse_weight().to_dense()

    def matmul_t(self, x2: torch.Tensor) -> torch.Tensor:
        """``W · x2`` for ``x2`` of shape ``(fan_in, n)``."""
        if self.mode == "dense":
            return self.weight @ x2
        return self.sparse_weight() @ x2

    def param_count(self) -> int:
        if self.mode == "dense":
            kept = int(torch.count_nonzero(self.weight))
        else:
            kept = int(torch.count_nonzero(self.values))
        return kept + (self.bias.numel() if self.bias is not None else 0)

    def _sparse_spec(self) -> dict[str, Any]:
        return {"mode": self.mode, "nnz": self.nnz, "block": list(self.block)}


@register_layer
class SparseLinear(_SparseWeight):
    """``nn.Linear`` computed as a sparse-dense product (dense below the break-even sparsity)."""

    stands_for = "Linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        mode: Mode = "csr",
        nnz: int = 0,
        block: tuple[int, int] | list[int] = (4, 4),
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._init_weight((out_features, in_features), mode, nnz, tuple(block))

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> SparseLinear:
        w = dense.masked_weight() if isinstance(dense, _Masked) else dense.weight
        config = config or SparseExecConfig()
        mode = (
            config.mode
            if config.mode != "auto"
            else choose_mode(w, config.min_sparsity, config.block)
        )
        nnz = _count(w, mode, config.block)
        layer = cls(
            dense.in_features, dense.out_features, dense.bias is not None, mode, nnz, config.block
        )
        layer = layer.to(device=w.device, dtype=w.dtype)
        if dense.bias is not None:
            layer.bias.data.copy_(dense.bias.detach())
        layer._set_weight(w)
        return layer

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            **self._sparse_spec(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dense":
            return F.linear(x, self.weight, self.bias)
        x2 = x.reshape(-1, self.in_features)
        y = self.matmul_t(x2.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def to_dense(self) -> nn.Linear:
        return dense_linear(self.dense_weight(), self.bias)


@register_layer
class SparseConv2d(_SparseWeight):
    """``nn.Conv2d`` (groups 1) as im2col then a sparse-dense product."""

    stands_for = "Conv2d"

    def __init__(
        self,
        conv_args: dict[str, Any],
        mode: Mode = "csr",
        nnz: int = 0,
        block: tuple[int, int] | list[int] = (4, 4),
    ) -> None:
        super().__init__()
        a = {k: tuple(v) if isinstance(v, list) else v for k, v in conv_args.items()}
        self.conv_args = a
        self.bias = nn.Parameter(torch.zeros(a["out_channels"])) if a["bias"] else None
        fan_in = a["in_channels"] * a["kernel_size"][0] * a["kernel_size"][1]
        self._init_weight((a["out_channels"], fan_in), mode, nnz, tuple(block))

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> SparseConv2d:
        w = dense.masked_weight() if isinstance(dense, _Masked) else dense.weight
        if isinstance(dense, _Masked):
            a = dict(dense.conv_args)
        else:
            if dense.groups != 1 or dense.padding_mode != "zeros" or isinstance(dense.padding, str):
                raise ValueError("sparse conv supports groups=1, numeric zero padding only")
            a = {
                k: getattr(dense, k)
                for k in (
                    "in_channels",
                    "out_channels",
                    "kernel_size",
                    "stride",
                    "padding",
                    "dilation",
                )
            }
            a["bias"] = dense.bias is not None
        if a.get("groups", 1) != 1 or isinstance(a["padding"], str):
            raise ValueError("sparse conv supports groups=1, numeric zero padding only")
        a = {
            k: a[k]
            for k in (
                "in_channels",
                "out_channels",
                "kernel_size",
                "stride",
                "padding",
                "dilation",
                "bias",
            )
        }
        config = config or SparseExecConfig()
        mode = (
            config.mode
            if config.mode != "auto"
            else choose_mode(w, config.min_sparsity, config.block)
        )
        layer = cls(a, mode, _count(w, mode, config.block), config.block)
        layer = layer.to(device=w.device, dtype=w.dtype)
        if dense.bias is not None:
            layer.bias.data.copy_(dense.bias.detach())
        layer._set_weight(w)
        return layer

    def spec(self) -> dict[str, Any]:
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in self.conv_args.items()}
        return {"conv_args": args, **self._sparse_spec()}

    def _shape(self) -> tuple[int, ...]:
        a = self.conv_args
        return (a["out_channels"], a["in_channels"], *a["kernel_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_args
        if self.mode == "dense":
            w = self.weight.reshape(self._shape())
            return conv2d(x, w, self.bias, a)
        n, _, h, w_ = x.shape
        kh, kw = a["kernel_size"]
        oh = (h + 2 * a["padding"][0] - a["dilation"][0] * (kh - 1) - 1) // a["stride"][0] + 1
        ow = (w_ + 2 * a["padding"][1] - a["dilation"][1] * (kw - 1) - 1) // a["stride"][1] + 1
        cols = F.unfold(x, a["kernel_size"], a["dilation"], a["padding"], a["stride"])
        cols = cols.permute(1, 0, 2).reshape(cols.shape[1], -1)  # (fan_in, n·L)
        y = self.matmul_t(cols).reshape(-1, n, oh * ow).permute(1, 0, 2)
        y = y.reshape(n, -1, oh, ow)
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y

    def to_dense(self) -> nn.Conv2d:
        weight = self.dense_weight().reshape(self._shape())
        return load_dense(nn.Conv2d(**self.conv_args), weight, self.bias)


def _count(w: torch.Tensor, mode: Mode, block: tuple[int, int]) -> int:
    m = matrix_view(w)
    if mode == "csr":
        return int(torch.count_nonzero(m))
    if mode == "bsr":
        if m.shape[0] % block[0] or m.shape[1] % block[1]:
            raise ValueError(
                f"blocks of {block[0]}x{block[1]} do not divide the "
                f"{m.shape[0]}x{m.shape[1]} weight matrix"
            )
        tiles = m.reshape(m.shape[0] // block[0], block[0], m.shape[1] // block[1], block[1])
        return int((tiles != 0).any(dim=(1, 3)).sum())
    return 0


@dataclasses.dataclass(frozen=True)
class SparseExecConfig(MethodConfig):
    """Run (pruned) linear and conv layers with sparse kernels where that is faster.

    Parameters
    ----------
    min_sparsity:
        Below this weight sparsity the layer stays a dense GEMM (``auto`` mode).
    mode:
        ``auto`` (choose per layer: BSR for whole-block sparsity, CSR above ``min_sparsity``,
        else dense), or force ``csr``, ``bsr`` or ``dense``.
    block:
        Block shape for BSR; it must divide the weight matrix.
    """

    method = "sparse_exec"
    min_sparsity: float = 0.75
    mode: Literal["auto", "csr", "bsr", "dense"] = "auto"
    block: tuple[int, int] = (4, 4)

    def validate(self) -> None:
        check_range(self, "min_sparsity", 0.0, 1.0)
        if min(self.block) < 1:
            raise ConfigError(f"SparseExecConfig.block={self.block!r} must be positive sizes")


@register_method(SparseExecConfig, family="prune", noop=SparseExecConfig(mode="dense"))
def sparse_exec(module: nn.Module, config: SparseExecConfig, ctx: Context) -> nn.Module:
    """Sparse (CSR/BSR) execution of pruned layers, dense below the break-even sparsity."""
    kind = getattr(module, "stands_for", "") or type(module).__name__
    cls = {"Linear": SparseLinear, "Conv2d": SparseConv2d}.get(kind)
    if cls is None or not isinstance(module, (nn.Linear, nn.Conv2d, _Masked)):
        raise SkipLayer(f"{type(module).__name__} has no sparse form")
    try:
        return cls.from_dense(module, config)
    except ValueError as e:
        raise SkipLayer(str(e)) from None
