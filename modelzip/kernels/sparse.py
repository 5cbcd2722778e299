"""Sparse × dense products for pruned weights: block-sparse (BSR) and unstructured (CSR).

``Y = W·X`` with ``W`` (``M × K``) sparse and ``X`` (``K × B``) dense, ``B`` the batch: each kept
block (or value) scales ``bh`` (or 1) rows of ``X`` into rows of ``Y``, so the work is
``2·nnz·B`` flops and the inner loop over the batch is contiguous and vectorized. Written by hand
in Numba: ``torch.sparse`` has a CSR product on the CPU (MKL) but no BSR × dense product, and
SciPy's are single-threaded and scalar. Whether sparse beats dense for a layer depends on density,
block size and batch; :func:`choose_sparse` measures it (Hoefler et al., "Sparsity in deep
learning", JMLR 2021, §8 discusses why the crossover must be measured per layer and machine).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from numba import njit, prange

from modelzip.kernels._jit import CHUNKS, pick
from modelzip.kernels._native import native


@dataclasses.dataclass(frozen=True)
class BSRMatrix:
    """A ``rows × cols`` matrix in block-compressed-row form with ``block = (bh, bw)`` blocks.

    ``blocks[t]`` is the ``bh × bw`` block at block row ``r`` (``indptr[r] ≤ t < indptr[r+1]``)
    and block column ``indices[t]``; edges are zero-padded to whole blocks.
    """

    rows: int
    cols: int
    block: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    blocks: np.ndarray

    @property
    def nnz_blocks(self) -> int:
        return int(self.indices.shape[0])

    @property
    def density(self) -> float:
        """Fraction of stored (kept) blocks."""
        bh, bw = self.block
        total = -(-self.rows // bh) * -(-self.cols // bw)
        return self.nnz_blocks / max(total, 1)

    @classmethod
    def from_dense(cls, weight: torch.Tensor | np.ndarray, block: tuple[int, int]) -> BSRMatrix:
        """Keep every block with a nonzero entry (a block-pruned weight keeps whole blocks)."""
        w = np.asarray(weight.detach().cpu() if isinstance(weight, torch.Tensor) else weight)
        w = w.astype(np.float32)
        bh, bw = block
        m, k = w.shape
        mb, kb = -(-m // bh), -(-k // bw)
        padded = np.zeros((mb * bh, kb * bw), dtype=np.float32)
        padded[:m, :k] = w
        tiles = padded.reshape(mb, bh, kb, bw).transpose(0, 2, 1, 3)  # (mb, kb, bh, bw)
        keep = np.abs(tiles).sum(axis=(2, 3)) > 0
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
        indices = np.nonzero(keep)[1].astype(np.int64)
        blocks = np.ascontiguousarray(tiles[keep])
        return cls(m, k, (bh, bw), indptr, indices, blocks)

    def to_dense(self) -> np.ndarray:
        bh, bw = self.block
        mb, kb = -(-self.rows // bh), -(-self.cols // bw)
        out = np.zeros((mb, kb, bh, bw), dtype=np.float32)
        rows = np.repeat(np.arange(mb), np.diff(self.indptr))
        out[rows, self.indices] = self.blocks
        return out.transpose(0, 2, 1, 3).reshape(mb * bh, kb * bw)[: self.rows, : self.cols]


@njit(cache=True, fastmath=True)
def _bsr_rows(indptr, indices, blocks, X, Y, lo, hi):
    bh, bw = blocks.shape[1], blocks.shape[2]
    ncol = X.shape[1]
    for br in range(lo, hi):
        for t in range(indptr[br], indptr[br + 1]):
            x0 = indices[t] * bw
            for r in range(bh):
                row = br * bh + r
                for c in range(bw):
                    v = blocks[t, r, c]
                    for n in range(ncol):
                        Y[row, n] += v * X[x0 + c, n]


@njit(cache=True, parallel=True)
def _bsr_mm(indptr, indices, blocks, X, Y):
    units = indptr.shape[0] - 1
    chunks = min(units, CHUNKS)
    for t in prange(chunks):
        _bsr_rows(indptr, indices, blocks, X, Y, t * units // chunks, (t + 1) * units // chunks)


@njit(cache=True)
def _bsr_mm_serial(indptr, indices, blocks, X, Y):
    _bsr_rows(indptr, indices, blocks, X, Y, 0, indptr.shape[0] - 1)


@njit(cache=True, fastmath=True, inline="always")
def _block_4x4(b, X, Y, x0, r0, ncol):
    # Per batch column, four X loads feed sixteen FMAs; the four Y rows are read and written
    # once per block (the generic loop does it per value).
    v00, v01, v02, v03 = b[0, 0], b[0, 1], b[0, 2], b[0, 3]
    v10, v11, v12, v13 = b[1, 0], b[1, 1], b[1, 2], b[1, 3]
    v20, v21, v22, v23 = b[2, 0], b[2, 1], b[2, 2], b[2, 3]
    v30, v31, v32, v33 = b[3, 0], b[3, 1], b[3, 2], b[3, 3]
    for n in range(ncol):
        a0, a1, a2, a3 = X[x0, n], X[x0 + 1, n], X[x0 + 2, n], X[x0 + 3, n]
        Y[r0, n] += v00 * a0 + v01 * a1 + v02 * a2 + v03 * a3
        Y[r0 + 1, n] += v10 * a0 + v11 * a1 + v12 * a2 + v13 * a3
        Y[r0 + 2, n] += v20 * a0 + v21 * a1 + v22 * a2 + v23 * a3
        Y[r0 + 3, n] += v30 * a0 + v31 * a1 + v32 * a2 + v33 * a3


@njit(cache=True, fastmath=True, inline="always")
def _two_blocks_4x4(b, c, X, Y, xb, xc, r0, ncol):
    # Two blocks of one block row per pass: the Y rows' loads and stores are shared by 32
    # FMAs instead of 16 (measured ~14% faster on one core than one block per pass).
    b00, b01, b02, b03 = b[0, 0], b[0, 1], b[0, 2], b[0, 3]
    b10, b11, b12, b13 = b[1, 0], b[1, 1], b[1, 2], b[1, 3]
    b20, b21, b22, b23 = b[2, 0], b[2, 1], b[2, 2], b[2, 3]
    b30, b31, b32, b33 = b[3, 0], b[3, 1], b[3, 2], b[3, 3]
    c00, c01, c02, c03 = c[0, 0], c[0, 1], c[0, 2], c[0, 3]
    c10, c11, c12, c13 = c[1, 0], c[1, 1], c[1, 2], c[1, 3]
    c20, c21, c22, c23 = c[2, 0], c[2, 1], c[2, 2], c[2, 3]
    c30, c31, c32, c33 = c[3, 0], c[3, 1], c[3, 2], c[3, 3]
    for n in range(ncol):
        a0, a1, a2, a3 = X[xb, n], X[xb + 1, n], X[xb + 2, n], X[xb + 3, n]
        e0, e1, e2, e3 = X[xc, n], X[xc + 1, n], X[xc + 2, n], X[xc + 3, n]
        Y[r0, n] += (b00 * a0 + b01 * a1 + b02 * a2 + b03 * a3
                     + c00 * e0 + c01 * e1 + c02 * e2 + c03 * e3)  # fmt: skip
        Y[r0 + 1, n] += (b10 * a0 + b11 * a1 + b12 * a2 + b13 * a3
                         + c10 * e0 + c11 * e1 + c12 * e2 + c13 * e3)  # fmt: skip
        Y[r0 + 2, n] += (b20 * a0 + b21 * a1 + b22 * a2 + b23 * a3
                         + c20 * e0 + c21 * e1 + c22 * e2 + c23 * e3)  # fmt: skip
        Y[r0 + 3, n] += (b30 * a0 + b31 * a1 + b32 * a2 + b33 * a3
                         + c30 * e0 + c31 * e1 + c32 * e2 + c33 * e3)  # fmt: skip


@njit(cache=True, fastmath=True)
def _bsr_rows_4x4(indptr, indices, blocks, X, Y, lo, hi):
    # 4 × 4 blocks unrolled by hand, two blocks of a block row at a time.
    ncol = X.shape[1]
    for br in range(lo, hi):
        r0 = br * 4
        t, end = indptr[br], indptr[br + 1]
        while t + 1 < end:
            _two_blocks_4x4(
                blocks[t], blocks[t + 1], X, Y, indices[t] * 4, indices[t + 1] * 4, r0, ncol
            )
            t += 2
        if t < end:
            _block_4x4(blocks[t], X, Y, indices[t] * 4, r0, ncol)


@njit(cache=True, parallel=True)
def _bsr_mm_4x4(indptr, indices, blocks, X, Y):
    units = indptr.shape[0] - 1
    chunks = min(units, CHUNKS)
    for t in prange(chunks):
        _bsr_rows_4x4(indptr, indices, blocks, X, Y, t * units // chunks, (t + 1) * units // chunks)


@njit(cache=True)
def _bsr_mm_4x4_serial(indptr, indices, blocks, X, Y):
    _bsr_rows_4x4(indptr, indices, blocks, X, Y, 0, indptr.shape[0] - 1)


def bsr_matmul(w: BSRMatrix, x: np.ndarray) -> np.ndarray:
    """``W·X`` for a :class:`BSRMatrix` ``W`` (``M × K``) and dense ``X`` (``K × B``)."""
    bh, bw = w.block
    kp = -(-w.cols // bw) * bw
    if kp == w.cols and x.dtype == np.float32 and x.flags.c_contiguous:
        xp = x  # already whole blocks: no padded copy
    else:
        xp = np.zeros((kp, x.shape[1]), dtype=np.float32)
        xp[: w.cols] = x
    rows = -(-w.rows // bh) * bh
    ext = native() if w.block == (4, 4) else None
    if ext is not None:
        y = ext.bsr4_matmul(
            torch.from_numpy(w.indptr), torch.from_numpy(w.indices),
            torch.from_numpy(np.ascontiguousarray(w.blocks, dtype=np.float32)),
            torch.from_numpy(xp), rows,
        ).numpy()  # fmt: skip
        return y[: w.rows]
    return bsr_matmul_numba(w, xp)[: w.rows]


def bsr_matmul_numba(w: BSRMatrix, xp: np.ndarray) -> np.ndarray:
    """:func:`bsr_matmul` on the portable Numba kernels (``xp`` already padded to whole
    blocks); returns all padded rows."""
    bh = w.block[0]
    y = np.zeros((-(-w.rows // bh) * bh, xp.shape[1]), dtype=np.float32)
    work = w.blocks.size * xp.shape[1]
    if w.block == (4, 4):
        kernel = pick(_bsr_mm_4x4, _bsr_mm_4x4_serial, work)
    else:
        kernel = pick(_bsr_mm, _bsr_mm_serial, work)
    kernel(w.indptr, w.indices, w.blocks, xp, y)
    return y


@dataclasses.dataclass(frozen=True)
class CSRMatrix:
    """A ``rows × cols`` matrix in compressed-sparse-row form (unstructured sparsity)."""

    rows: int
    cols: int
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def density(self) -> float:
        return self.values.shape[0] / max(self.rows * self.cols, 1)

    @classmethod
    def from_dense(cls, weight: torch.Tensor | np.ndarray) -> CSRMatrix:
        w = np.asarray(weight.detach().cpu() if isinstance(weight, torch.Tensor) else weight)
        w = w.astype(np.float32)
        keep = w != 0
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
        return cls(*w.shape, indptr, np.nonzero(keep)[1].astype(np.int64), w[keep].copy())

    def to_dense(self) -> np.ndarray:
        out = np.zeros((self.rows, self.cols), dtype=np.float32)
        rows = np.repeat(np.arange(self.rows), np.diff(self.indptr))
        out[rows, self.indices] = self.values
        return out


@njit(cache=True, fastmath=True)
def _csr_rows(indptr, indices, values, X, Y, lo, hi):
    ncol = X.shape[1]
    for row in range(lo, hi):
        for t in range(indptr[row], indptr[row + 1]):
            v = values[t]
            k = indices[t]
            for n in range(ncol):
                Y[row, n] += v * X[k, n]


@njit(cache=True, parallel=True)
def _csr_mm(indptr, indices, values, X, Y):
    units = indptr.shape[0] - 1
    chunks = min(units, CHUNKS)
    for t in prange(chunks):
        _csr_rows(indptr, indices, values, X, Y, t * units // chunks, (t + 1) * units // chunks)


@njit(cache=True)
def _csr_mm_serial(indptr, indices, values, X, Y):
    _csr_rows(indptr, indices, values, X, Y, 0, indptr.shape[0] - 1)


def csr_matmul(w: CSRMatrix, x: np.ndarray) -> np.ndarray:
    """``W·X`` for a :class:`CSRMatrix` ``W`` (``M × K``) and dense ``X`` (``K × B``)."""
    y = np.zeros((w.rows, x.shape[1]), dtype=np.float32)
    kernel = pick(_csr_mm, _csr_mm_serial, w.values.size * x.shape[1])
    kernel(w.indptr, w.indices, w.values, np.ascontiguousarray(x, dtype=np.float32), y)
    return y


@dataclasses.dataclass(frozen=True)
class CSCMatrix:
    """A ``rows × cols`` matrix by columns (compressed sparse column), int32 indices: the layout
    of EIE (Han et al., ISCA 2016) for a product with few input rows, where each *nonzero*
    input value scatters its weight column and a zero input costs nothing."""

    rows: int
    cols: int
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @classmethod
    def from_csr(cls, w: CSRMatrix) -> CSCMatrix:
        order = np.argsort(w.indices, kind="stable")  # by column, rows ascending within one
        row_of = np.repeat(np.arange(w.rows, dtype=np.int32), np.diff(w.indptr))
        counts = np.bincount(w.indices, minlength=w.cols)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        values = np.ascontiguousarray(w.values[order], dtype=np.float32)
        return cls(w.rows, w.cols, indptr, row_of[order], values)


@njit(cache=True, fastmath=True)
def csc_linear(indptr, indices, values, bias, X, Y):
    """``Y = X · Wᵀ + bias`` for ``W`` by columns (:class:`CSCMatrix` arrays) and ``X``
    (``B × K``, C-contiguous float32) with few rows, skipping the zeros of ``X`` (a dense GEMM
    cannot); ``Y`` is ``B × M``. One compiled call with no Python around it: at batch 1 the
    product takes microseconds."""
    for b in range(X.shape[0]):
        for r in range(Y.shape[1]):
            Y[b, r] = bias[r]
        for k in range(X.shape[1]):
            xk = X[b, k]
            if xk != 0:  # ReLU outputs and image backgrounds: often most of the inputs
                for t in range(indptr[k], indptr[k + 1]):
                    Y[b, indices[t]] += values[t] * xk


def sparse_matmul(w: BSRMatrix | CSRMatrix, x: np.ndarray) -> np.ndarray:
    """``W·X`` for either sparse format."""
    return bsr_matmul(w, x) if isinstance(w, BSRMatrix) else csr_matmul(w, x)


def detect_block(weight: torch.Tensor, candidates: tuple[int, ...] = (16, 8, 4, 2)) -> int:
    """Largest square block size whose zero pattern covers the weight's zeros exactly (each block
    all zero or all kept), 1 when the sparsity is unstructured."""
    w = weight.detach().reshape(weight.shape[0], -1) != 0
    m, k = w.shape
    for b in candidates:
        if m < b or k < b:
            continue
        pad = torch.zeros(-(-m // b) * b, -(-k // b) * b, dtype=torch.bool)
        pad[:m, :k] = w
        tiles = pad.reshape(pad.shape[0] // b, b, pad.shape[1] // b, b).sum(dim=(1, 3))
        full = torch.zeros_like(pad)
        full[:m, :k] = True
        cap = full.reshape(tiles.shape[0], b, tiles.shape[1], b).sum(dim=(1, 3))
        if bool(((tiles == 0) | (tiles == cap)).all()) and bool((tiles == 0).any()):
            return b
    return 1


def _median_time(fn: object, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def choose_sparse(
    w: BSRMatrix | CSRMatrix, dense: torch.Tensor, batch: int, reps: int = 5
) -> tuple[bool, float, float]:
    """Measure ``W·X`` sparse and dense for a ``batch``-column input, interleaved; returns
    ``(sparse_is_faster, sparse_seconds, dense_seconds)`` (medians). Runs each kernel once
    first so compilation is not timed."""
    x = torch.randn(dense.shape[1], batch)
    xn = x.numpy()
    sparse_matmul(w, xn)
    ts, td = [], []
    for _ in range(reps):
        ts.append(_median_time(lambda: sparse_matmul(w, xn), 1))
        td.append(_median_time(lambda: dense @ x, 1))
    s, d = float(np.median(ts)), float(np.median(td))
    return s < d, s, d


__all__ = [
    "BSRMatrix",
    "CSCMatrix",
    "CSRMatrix",
    "bsr_matmul",
    "choose_sparse",
    "csc_linear",
    "csr_matmul",
    "detect_block",
    "sparse_matmul",
]
