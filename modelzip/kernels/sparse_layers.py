"""The native executor of :class:`~modelzip.prune.sparse_exec.SparseFormat`: a pruned weight's
CSR or BSR arrays multiplied by :mod:`modelzip.kernels.sparse` (Numba, or AVX-512 for 4 × 4
blocks). Inference only, CPU float32.

The layers themselves (:class:`SparseLinear`, :class:`SparseConv2d`) are the prune family's; they
are importable here too, where they lived before the two sparse lines became one format.
"""

from __future__ import annotations

import numpy as np
import torch

from modelzip.kernels.sparse import BSRMatrix, CSCMatrix, CSRMatrix, csc_linear, sparse_matmul
from modelzip.prune.sparse_exec import SparseConv2d, SparseFormat, SparseLinear


def matrix(layer: SparseFormat) -> BSRMatrix | CSRMatrix:
    """The layer's stored arrays as the kernels' matrix (views of its CPU int64 buffers)."""
    ptr, idx, values = (t.detach().cpu() for t in layer.stored_arrays())
    ptr, idx, values = ptr.long().numpy(), idx.long().numpy(), values.float().numpy()
    rows, cols = layer.matrix_shape
    if layer.mode == "csr":
        return CSRMatrix(rows, cols, ptr, idx, values.reshape(-1))
    return BSRMatrix(rows, cols, layer.block, ptr, idx, values)


def matmul_t(layer: SparseFormat, cols: torch.Tensor) -> torch.Tensor:
    """``W · cols`` for ``cols`` of shape ``(fan_in, n)``, on ``cols``' device."""
    x = cols.detach().cpu().float().contiguous().numpy()
    return torch.from_numpy(sparse_matmul(matrix(layer), x)).to(cols.device)


#: Up to this many input rows a CSR linear runs by columns, skipping zero inputs (EIE's
#: batch-1 product); with more rows the row-wise kernel's loop over the batch vectorizes.
FEW_ROWS = 4


def _columns(layer: SparseFormat) -> tuple[np.ndarray, ...]:
    """The arguments of the by-columns kernel: the weight as CSC arrays and the bias (zeros if
    none), built once per stored tensors (deployed layers are frozen; a reload or an in-place
    edit gives a new version or pointer, and a new build)."""
    values, bias = layer.values, layer.bias
    key = (values._version, values.data_ptr(), None if bias is None else bias._version)
    cached = layer.__dict__.get("_csc_cache")
    if cached is None or cached[0] != key:
        w = CSCMatrix.from_csr(matrix(layer))  # type: ignore[arg-type]
        b = np.zeros(w.rows, np.float32) if bias is None else bias.detach().float().numpy()
        cached = (key, (w.indptr, w.indices, w.values, b.copy()))
        layer.__dict__["_csc_cache"] = cached
    return cached[1]


def linear(layer: SparseFormat, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x · Wᵀ + b`` on the native kernels: by columns for a CSR weight and a few CPU float32
    rows without autograd (zero inputs skipped), else the row-wise sparse product.

    The by-columns path is kept to a few calls on purpose: at batch 1 a LeNet-300 layer's
    product takes a few microseconds, as long as the Python around it."""
    if (
        x.dim() == 2
        and x.shape[0] <= FEW_ROWS
        and layer.mode == "csr"
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and bias is layer.bias
    ):
        out = np.empty((x.shape[0], layer.matrix_shape[0]), np.float32)
        csc_linear(*_columns(layer), x.contiguous().numpy(), out)
        return torch.from_numpy(out)
    rows = x.reshape(-1, x.shape[-1])
    y = matmul_t(layer, rows.t()).t()
    y = y if bias is None else y + bias
    return y.reshape(*x.shape[:-1], -1)


__all__ = ["FEW_ROWS", "SparseConv2d", "SparseLinear", "linear", "matmul_t", "matrix"]
