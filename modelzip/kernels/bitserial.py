"""Bit-serial low-bit GEMM: k-bit × k-bit integer products as AND + popcount over bit planes.

For codes ``x = Σ_p c_p·x_p`` and ``w = Σ_q c_q·w_q`` with bit planes ``x_p, w_q ∈ {0, 1}`` and
plane weights ``c_p = 2^p`` (unsigned) or, in two's complement, ``c_{b−1} = −2^{b−1}`` for the
sign plane (signed), the dot product is

    ``x·w = Σ_p Σ_q c_p·c_q·popcount(X_p ∧ W_q)``

(the bit-serial scheme of Stripes/Loom/BISMO-style accelerators, Umuroglu et al. FPL 2018, here in
software). Every term is an integer, so the result is exact. Written by hand in Numba because no
well-kept library provides bit-plane GEMM; 2, 3 and 4 bits (any width up to 8 works).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from modelzip.kernels._jit import CHUNKS, pick, popcount
from modelzip.kernels.bitpack import pack_planes


def plane_weights(bits: int, signed: bool) -> np.ndarray:
    """``c_p`` of each plane: ``2^p``, with ``−2^{b−1}`` for the top plane when ``signed``."""
    c = np.array([1 << p for p in range(bits)], dtype=np.int64)
    if signed:
        c[-1] = -c[-1]
    return c


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest code of a ``bits``-bit integer."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


@njit(cache=True, inline="always")
def _and_dot(a, b):
    acc = 0
    for w in range(a.shape[0]):
        acc += np.int64(popcount(a[w] & b[w]))
    return acc


@njit(cache=True, fastmath=True)
def _and_rows(A, B, c, C, lo, hi):
    # C += c · popcount(A ∧ B) for one plane pair, row pairs lo..hi-1: the 2 × 4 register tile
    # of the binary GEMM on 2-D operands (3-D plane indexing vectorized ~3× worse).
    M, W = A.shape
    N = B.shape[0]
    n4 = N - N % 4
    for ib in range(lo, hi):
        i0 = 2 * ib
        if i0 + 1 == M:  # odd last row
            for j in range(N):
                C[i0, j] += c * _and_dot(A[i0], B[j])
            continue
        for j0 in range(0, n4, 4):
            c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = 0
            for w in range(W):
                a0, a1 = A[i0, w], A[i0 + 1, w]
                b0, b1, b2, b3 = B[j0, w], B[j0 + 1, w], B[j0 + 2, w], B[j0 + 3, w]
                c00 += np.int64(popcount(a0 & b0))
                c01 += np.int64(popcount(a0 & b1))
                c02 += np.int64(popcount(a0 & b2))
                c03 += np.int64(popcount(a0 & b3))
                c10 += np.int64(popcount(a1 & b0))
                c11 += np.int64(popcount(a1 & b1))
                c12 += np.int64(popcount(a1 & b2))
                c13 += np.int64(popcount(a1 & b3))
            C[i0, j0] += c * c00
            C[i0, j0 + 1] += c * c01
            C[i0, j0 + 2] += c * c02
            C[i0, j0 + 3] += c * c03
            C[i0 + 1, j0] += c * c10
            C[i0 + 1, j0 + 1] += c * c11
            C[i0 + 1, j0 + 2] += c * c12
            C[i0 + 1, j0 + 3] += c * c13
        for j in range(n4, N):
            C[i0, j] += c * _and_dot(A[i0], B[j])
            C[i0 + 1, j] += c * _and_dot(A[i0 + 1], B[j])


@njit(cache=True, parallel=True)
def _and_gemm_acc(A, B, c, C):
    units = (A.shape[0] + 1) // 2
    chunks = min(units, CHUNKS)
    for t in prange(chunks):
        _and_rows(A, B, c, C, t * units // chunks, (t + 1) * units // chunks)


@njit(cache=True)
def _and_gemm_acc_serial(A, B, c, C):
    _and_rows(A, B, c, C, 0, (A.shape[0] + 1) // 2)


def bitserial_gemm_packed(
    a_planes: np.ndarray,
    b_planes: np.ndarray,
    a_weights: np.ndarray,
    b_weights: np.ndarray,
) -> np.ndarray:
    """``C = A·Bᵀ`` from bit planes (:func:`~modelzip.kernels.bitpack.pack_planes`) and plane
    weights (:func:`plane_weights`); ``int64``, exact."""
    a_planes, b_planes = np.ascontiguousarray(a_planes), np.ascontiguousarray(b_planes)
    c = np.zeros((a_planes.shape[1], b_planes.shape[1]), dtype=np.int64)
    kernel = pick(_and_gemm_acc, _and_gemm_acc_serial, c.size * a_planes.shape[2])
    # Shifted accumulation, one plane pair at a time: C += c_p·c_q·popcount(A_p ∧ B_q).
    for p, cp in enumerate(np.asarray(a_weights, dtype=np.int64)):
        for q, cq in enumerate(np.asarray(b_weights, dtype=np.int64)):
            kernel(a_planes[p], b_planes[q], int(cp * cq), c)
    return c


def bitserial_gemm(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, bits: int, signed: bool
) -> np.ndarray:
    """Exact integer ``A·Bᵀ`` of ``bits``-bit codes ``A`` ``(M, K)`` and ``B`` ``(N, K)``.

    Parameters
    ----------
    a, b:
        Integer codes in :func:`code_range` ``(bits, signed)``.
    bits:
        Bit width (2, 3, 4 ...; at most 8).
    signed:
        Two's-complement codes (True) or unsigned codes (False).
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits}: bit-serial GEMM takes 1 to 8 bits")
    lo, hi = code_range(bits, signed)
    for name, t in (("a", a), ("b", b)):
        t = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t)
        if t.size and (t.min() < lo or t.max() > hi):
            raise ValueError(f"{name} has codes outside [{lo}, {hi}] for bits={bits}")
    c = plane_weights(bits, signed)
    return bitserial_gemm_packed(pack_planes(a, bits), pack_planes(b, bits), c, c)


__all__ = ["bitserial_gemm", "bitserial_gemm_packed", "code_range", "plane_weights"]
