"""Executing pruned layers with sparse kernels, once sparsity pays.

A pruned weight ``W`` (``out × fan_in``) is stored in CSR (or BSR when its zeros form whole
``b_r × b_c`` blocks), and the layer computes ``y = (W · xᵀ)ᵀ + b`` with a sparse-dense product;
a conv first unfolds its input (im2col) so that it is the same product. Below ``min_sparsity`` a
sparse product is slower than a dense GEMM (index traffic, no SIMD over rows), so the layer keeps
a dense weight instead: measured on one CPU core, CSR breaks even with a dense GEMM at about 75%
sparsity (see ``benchmarks/prune.py``).

The storage is one :class:`SparseFormat` with two executors: PyTorch's sparse product
(``"torch"``, any device; the ``sparse_exec`` method's layers) or this package's Numba/AVX-512
kernels (``"native"``, CPU float32, edges padded to whole blocks; what
:func:`modelzip.deploy.materialize` builds from a masked layer, in :mod:`modelzip.kernels`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.compressed import CompressedConv2d, CompressedLinear, WeightFormat
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.errors import ConfigError
from modelzip.core.geometry import ConvGeometry, UnsupportedConv
from modelzip.core.module import CompressedModule, register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.prune.grains import block_density, matrix_view
from modelzip.prune.masked import MaskFormat

Mode = Literal["dense", "csr", "bsr"]
Executor = Literal["torch", "native"]

#: Per executor, the names and index type of the stored row pointers and column indices (what
#: each line of files has always held: torch's sparse tensors take int32, the native kernels
#: int64), and whether CSR values are stored flat (else as ``1 × 1`` blocks).
_LAYOUT = {
    "torch": ("crow", "col", torch.int32, True),
    "native": ("indptr", "indices", torch.int64, False),
}


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


def compress_blocks(
    m: torch.Tensor, block: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block-row pointers, block-column indices (int64) and the ``(nnz, b_r, b_c)`` blocks with a
    nonzero of matrix ``m`` (zero-padded to whole blocks); CSR for ``1 × 1`` blocks."""
    (rows, cols), (br, bc) = m.shape, block
    nbr, nbc = -(-rows // br), -(-cols // bc)
    tiles = F.pad(m, (0, nbc * bc - cols, 0, nbr * br - rows))
    tiles = tiles.reshape(nbr, br, nbc, bc).transpose(1, 2)
    keep = (tiles != 0).flatten(2).any(dim=2)
    indptr = F.pad(keep.sum(dim=1).cumsum(0), (1, 0))
    return indptr, keep.nonzero()[:, 1], tiles[keep]


class SparseFormat(WeightFormat):
    """Storage: the weight as an ``out × fan_in`` matrix, in CSR or BSR arrays (row pointers,
    column indices, kept values), or dense; multiplied by the ``executor``'s kernels."""

    onnx_export = "dense: ONNX has no sparse weight type; the zeros stay in a float weight"

    def _init_format(
        self,
        weight_shape: tuple[int, ...],
        mode: Mode = "csr",
        nnz: int = 0,
        block: tuple[int, int] | list[int] = (1, 1),
        executor: Executor = "torch",
    ) -> None:
        self.weight_shape = tuple(weight_shape)
        self.matrix_shape = (weight_shape[0], math.prod(weight_shape[1:]))
        self.mode, self.nnz, self.executor = mode, int(nnz), executor
        self.block = (int(block[0]), int(block[1])) if mode == "bsr" else (1, 1)
        if mode == "dense":
            self.register_buffer("weight", torch.zeros(self.matrix_shape))
            return
        ptr, idx, index_dtype, flat_csr = _LAYOUT[executor]
        block_rows = -(-self.matrix_shape[0] // self.block[0])
        self.register_buffer(ptr, torch.zeros(block_rows + 1, dtype=index_dtype))
        self.register_buffer(idx, torch.zeros(self.nnz, dtype=index_dtype))
        flat = flat_csr and mode == "csr"
        self.register_buffer("values", torch.zeros(self.nnz, *(() if flat else self.block)))

    def format_spec(self) -> dict[str, Any]:
        block = list(self.block)
        return {"mode": self.mode, "nnz": self.nnz, "block": block, "executor": self.executor}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Any:
        spec = dict(spec)
        if "executor" not in spec:  # written before the torch and native lines were one format
            spec["executor"] = "torch" if "mode" in spec else "native"
            if isinstance(spec["block"], int):  # the native line's square blocks; 1 = CSR
                b = spec["block"]
                spec["mode"], spec["block"] = ("csr" if b == 1 else "bsr"), (b, b)
            spec.setdefault("bias", spec.get("conv_args", {}).get("bias", True))
        return super().from_spec(spec)  # type: ignore[misc]

    @classmethod
    def from_dense(cls, dense: nn.Module, config: SparseExecConfig | int | None = None) -> Any:
        """``dense`` (a plain or masked linear/conv) in sparse form.

        ``config`` is a :class:`SparseExecConfig` (torch's kernels, the mode chosen by sparsity)
        or the block size :func:`modelzip.deploy.materialize` measured (the native kernels: CSR
        for 1, else square BSR blocks).
        """
        if isinstance(dense, CompressedModule):
            dense = dense.to_dense()  # a masked layer's weight is its masked weight
        if isinstance(dense, nn.Conv2d) and (dense.groups != 1 or isinstance(dense.padding, str)):
            raise ValueError("sparse conv supports groups=1 and numeric zero padding only")
        w = matrix_view(dense.weight.detach())
        if isinstance(config, int):
            mode, block, executor = ("csr" if config == 1 else "bsr"), (config, config), "native"
            w = w.float()
        else:
            config = config or SparseExecConfig()
            mode, block, executor = config.mode, config.block, "torch"
            if mode == "auto":
                mode = choose_mode(w, config.min_sparsity, block)
            if mode == "bsr" and (w.shape[0] % block[0] or w.shape[1] % block[1]):
                raise ValueError(
                    f"blocks of {block[0]}x{block[1]} do not divide the "
                    f"{w.shape[0]}x{w.shape[1]} weight matrix"
                )
        arrays = compress_blocks(w, block if mode == "bsr" else (1, 1)) if mode != "dense" else ()
        nnz = arrays[1].numel() if arrays else 0
        layer = cls.like(dense, mode=mode, nnz=nnz, block=block, executor=executor)  # type: ignore[attr-defined]
        layer = layer.to(dtype=w.dtype)
        with torch.no_grad():
            for t, src in zip(layer.stored_arrays(), arrays or (w,), strict=True):
                t.copy_(src.reshape(t.shape))
            if layer.bias is not None:
                layer.bias.copy_(dense.bias)
        return layer

    def stored_arrays(self) -> tuple[torch.Tensor, ...]:
        """(row pointers, column indices, values as stored), or (the dense matrix,)."""
        if self.mode == "dense":
            return (self.weight,)
        ptr, idx, _, _ = _LAYOUT[self.executor]
        return getattr(self, ptr), getattr(self, idx), self.values

    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_packed_state(state)  # type: ignore[misc]
        if self.mode == "dense":
            return
        # Indices read from a file are checked once, so a corrupt file fails here with an error
        # instead of reading out of bounds in every forward.
        ptr, idx, _ = self.stored_arrays()
        block_cols = -(-self.matrix_shape[1] // self.block[1])
        ok = int(ptr[0]) == 0 and int(ptr[-1]) == idx.numel() and bool((ptr.diff() >= 0).all())
        if not ok or (idx.numel() and not 0 <= int(idx.min()) <= int(idx.max()) < block_cols):
            raise ValueError("corrupt sparse weight: row pointers or column indices out of range")

    def decode_weight(self) -> torch.Tensor:
        if self.mode == "dense":
            return self.weight.reshape(self.weight_shape)
        ptr, idx, values = self.stored_arrays()
        (rows, cols), (br, bc) = self.matrix_shape, self.block
        tiles = values.new_zeros(ptr.numel() - 1, -(-cols // bc), br, bc)
        block_row = torch.repeat_interleave(torch.arange(len(tiles), device=ptr.device), ptr.diff())
        tiles[block_row, idx.long()] = values.reshape(-1, br, bc)
        matrix = tiles.transpose(1, 2).reshape(tiles.shape[0] * br, -1)[:rows, :cols]
        return matrix.reshape(self.weight_shape)

    def weight_params(self) -> int:
        return int(torch.count_nonzero(self.stored_arrays()[-1]))

    def sparsity(self) -> float:
        return 1.0 - self.weight_params() / math.prod(self.weight_shape)

    def matmul_t(self, cols: torch.Tensor) -> torch.Tensor:
        """``W · cols`` for ``cols`` of shape ``(fan_in, n)``, on the executor's kernels."""
        if self.executor == "native":  # the kernels sit above the families: imported on use
            return importlib.import_module("modelzip.kernels.sparse_layers").matmul_t(self, cols)
        ptr, idx, values = self.stored_arrays()
        make = torch.sparse_csr_tensor if self.mode == "csr" else torch.sparse_bsr_tensor
        values = values.reshape(-1) if self.mode == "csr" else values
        return make(ptr, idx, values, self.matrix_shape, check_invariants=False) @ cols

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "dense":
            return super().linear(x, bias)
        if self.executor == "native":
            return importlib.import_module("modelzip.kernels.sparse_layers").linear(self, x, bias)
        y = self.matmul_t(x.reshape(-1, x.shape[-1]).t()).t()
        y = y if bias is None else y + bias
        return y.reshape(*x.shape[:-1], -1)

    def conv2d(
        self, x: torch.Tensor, geometry: ConvGeometry, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.mode == "dense":
            return super().conv2d(x, geometry, bias)
        g = geometry
        cols = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride)  # (n, fan_in, L)
        n, fan_in, pixels = cols.shape
        y = self.matmul_t(cols.transpose(0, 1).reshape(fan_in, n * pixels))  # (out, n·L)
        kh = g.kernel_size[0]
        oh = (x.shape[2] + 2 * g.padding[0] - g.dilation[0] * (kh - 1) - 1) // g.stride[0] + 1  # type: ignore[index]
        y = y.reshape(-1, n, pixels).transpose(0, 1).reshape(n, -1, oh, pixels // oh)
        return y if bias is None else y + bias[:, None, None]


@register_layer
class SparseLinear(SparseFormat, CompressedLinear):
    """``nn.Linear`` computed as a sparse-dense product (dense below the break-even sparsity)."""


@register_layer
class SparseConv2d(SparseFormat, CompressedConv2d):
    """``nn.Conv2d`` (groups 1) as im2col then a sparse-dense product."""


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
    if cls is None or not isinstance(module, (nn.Linear, nn.Conv2d, MaskFormat)):
        raise SkipLayer(f"{type(module).__name__} has no sparse form")
    try:
        return cls.from_dense(module, config)
    except (ValueError, UnsupportedConv) as e:
        raise SkipLayer(str(e)) from None
