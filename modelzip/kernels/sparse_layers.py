"""The native executor of :class:`~modelzip.prune.sparse_exec.SparseFormat`: a pruned weight's
CSR or BSR arrays multiplied by :mod:`modelzip.kernels.sparse` (Numba, or AVX-512 for 4 × 4
blocks). Inference only, CPU float32.

The layers themselves (:class:`SparseLinear`, :class:`SparseConv2d`) are the prune family's; they
are importable here too, where they lived before the two sparse lines became one format.
"""

from __future__ import annotations

import torch

from modelzip.kernels.sparse import BSRMatrix, CSRMatrix, sparse_matmul
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


__all__ = ["SparseConv2d", "SparseLinear", "matmul_t", "matrix"]
