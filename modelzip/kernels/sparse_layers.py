"""Executable sparse layers: pruned weights stored as BSR (block-pruned) or CSR (unstructured)
and multiplied by :mod:`modelzip.kernels.sparse`. Inference only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.module import CompressedModule, dense_linear, register_layer
from modelzip.kernels.sparse import BSRMatrix, CSRMatrix, sparse_matmul


class _Sparse(CompressedModule):
    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    bias: nn.Parameter | None

    def _init_sparse(self, rows: int, cols: int, block: int, nnz: int, bias: bool) -> None:
        self.rows, self.cols, self.block, self.nnz = rows, cols, block, nnz
        nbr = -(-rows // block)
        self.register_buffer("indptr", torch.zeros(nbr + 1, dtype=torch.int64))
        self.register_buffer("indices", torch.zeros(nnz, dtype=torch.int64))
        self.register_buffer("values", torch.zeros(nnz, block, block))
        self.bias = nn.Parameter(torch.zeros(rows)) if bias else None
        self._matrix: BSRMatrix | CSRMatrix | None = None

    @torch.no_grad()
    def _fill(self, m: BSRMatrix | CSRMatrix, bias: torch.Tensor | None) -> None:
        self.indptr.copy_(torch.from_numpy(m.indptr))
        self.indices.copy_(torch.from_numpy(m.indices))
        vals = m.blocks if isinstance(m, BSRMatrix) else m.values
        self.values.copy_(torch.from_numpy(vals).reshape(self.values.shape))
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias)

    @staticmethod
    def _build(weight2d: torch.Tensor, block: int) -> BSRMatrix | CSRMatrix:
        if block == 1:
            return CSRMatrix.from_dense(weight2d)
        return BSRMatrix.from_dense(weight2d, (block, block))

    def matrix(self) -> BSRMatrix | CSRMatrix:
        if self._matrix is None:
            ip, ix = self.indptr.numpy(), self.indices.numpy()
            if self.block == 1:
                self._matrix = CSRMatrix(self.rows, self.cols, ip, ix, self.values.numpy().ravel())
            else:
                b = (self.block, self.block)
                self._matrix = BSRMatrix(self.rows, self.cols, b, ip, ix, self.values.numpy())
        return self._matrix

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._matrix = None
        super()._load_from_state_dict(*args, **kwargs)

    def weight2d(self) -> torch.Tensor:
        return torch.from_numpy(self.matrix().to_dense().copy())

    def sparsity(self) -> float:
        return 1.0 - self.nnz * self.block * self.block / (self.rows * self.cols)

    def param_count(self) -> int:
        return int((self.values != 0).sum()) + (self.bias.numel() if self.bias is not None else 0)

    def _matmul_t(self, cols: torch.Tensor) -> torch.Tensor:
        """``W · cols`` for ``cols`` (``K × n``)."""
        return torch.from_numpy(sparse_matmul(self.matrix(), cols.float().contiguous().numpy()))


@register_layer
class SparseLinear(_Sparse):
    """``nn.Linear`` with a pruned weight multiplied as BSR (``block > 1``) or CSR (``block=1``)."""

    stands_for = "Linear"

    def __init__(
        self, in_features: int, out_features: int, block: int, nnz: int, bias: bool = True
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_sparse(out_features, in_features, block, nnz, bias)

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> SparseLinear:
        dense = _plain(dense)
        block = int(getattr(config, "block", config or 1))
        w = _effective_weight(dense)
        m = cls._build(w, block)
        nnz = m.nnz_blocks if isinstance(m, BSRMatrix) else m.values.shape[0]
        layer = cls(dense.in_features, dense.out_features, block, nnz, dense.bias is not None)
        layer._fill(m, dense.bias)
        return layer

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "block": self.block, "nnz": self.nnz, "bias": self.bias is not None}  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, self.in_features).cpu()
        y = self._matmul_t(x2.t()).t()
        if self.bias is not None:
            y = y + self.bias.detach()
        return y.reshape(*lead, self.out_features).to(x.device)

    def to_dense(self) -> nn.Linear:
        return dense_linear(self.weight2d(), self.bias)


@register_layer
class SparseConv2d(_Sparse):
    """``nn.Conv2d`` (groups 1) as im2col + sparse ``W·cols`` (BSR or CSR)."""

    stands_for = "Conv2d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        block: int,
        nnz: int,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.conv_args = {
            "in_channels": in_channels, "out_channels": out_channels,
            "kernel_size": tuple(kernel_size), "stride": tuple(stride),
            "padding": tuple(padding), "dilation": tuple(dilation), "bias": bias,
        }  # fmt: skip
        k = in_channels * kernel_size[0] * kernel_size[1]
        self._init_sparse(out_channels, k, block, nnz, bias)

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> SparseConv2d:
        dense = _plain(dense)
        if dense.groups != 1 or isinstance(dense.padding, str):
            raise ValueError("sparse convolution needs groups=1 and numeric padding")
        block = int(getattr(config, "block", config or 1))
        w = _effective_weight(dense).reshape(dense.out_channels, -1)
        m = cls._build(w, block)
        nnz = m.nnz_blocks if isinstance(m, BSRMatrix) else m.values.shape[0]
        layer = cls(dense.in_channels, dense.out_channels, dense.kernel_size, dense.stride,
                    dense.padding, dense.dilation, block, nnz, dense.bias is not None)  # fmt: skip
        layer._fill(m, dense.bias)
        return layer

    def spec(self) -> dict[str, Any]:
        spec = {k: list(v) if isinstance(v, tuple) else v for k, v in self.conv_args.items()}
        return {**spec, "block": self.block, "nnz": self.nnz}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_args
        x = x.detach().cpu().float()
        cols = F.unfold(x, a["kernel_size"], a["dilation"], a["padding"], a["stride"])
        b, ck, L = cols.shape
        y = self._matmul_t(cols.transpose(0, 1).reshape(ck, b * L))  # (O, B·L)
        h = (x.shape[2] + 2 * a["padding"][0] - a["dilation"][0] * (a["kernel_size"][0] - 1)
             - 1) // a["stride"][0] + 1  # fmt: skip
        y = y.reshape(-1, b, L).transpose(0, 1).reshape(b, -1, h, L // h)
        if self.bias is not None:
            y = y + self.bias.detach().reshape(1, -1, 1, 1)
        return y

    def to_dense(self) -> nn.Conv2d:
        dense = nn.Conv2d(**self.conv_args)
        with torch.no_grad():
            dense.weight.copy_(self.weight2d().reshape(dense.weight.shape))
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


def _plain(layer: nn.Module) -> nn.Module:
    """The plain torch layer of a masked layer (its weight is the masked weight)."""
    return layer.to_dense() if hasattr(layer, "masked_weight") else layer


def _effective_weight(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().float().cpu()


__all__ = ["SparseConv2d", "SparseLinear"]
