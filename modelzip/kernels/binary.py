"""Binary GEMM and convolution on bit-packed operands (XNOR-Net / BNN) and binary-weight GEMM
with real activations (BWN).

XNOR-Net (Rastegari et al., ECCV 2016) and BNN (Hubara et al., NeurIPS 2016): for ``a, b`` in
``{−1, +1}^K`` packed as sign bits, ``a·b = K − 2·popcount(a ⊕ b)`` (XNOR counts agreements; we
count disagreements with XOR, the same thing). The kernels are written by hand in Numba because no
well-kept Python library provides packed-bit GEMM; ``popcount`` lowers to AVX-512 ``vpopcntq``
where the CPU has it (see :mod:`modelzip.kernels._jit`). Kernels compile on first call and
are cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from modelzip.kernels._jit import CHUNKS, pick, popcount
from modelzip.kernels._native import native
from modelzip.kernels.bitpack import pack_bits, unpack_bits, words_for


@njit(cache=True, inline="always")
def _dot(A, i, B, j):
    acc = 0
    for w in range(A.shape[1]):
        acc += np.int64(popcount(A[i, w] ^ B[j, w]))
    return acc


@njit(cache=True, inline="always")
def _epilogue(Y, i, t, corr, r, alpha, beta, affine):
    # One row of the output from its integer dot products t: (t − corr[r])·α + β, or t itself
    # for the exact integer GEMM. A separate, vectorized pass over a row still in L1 (fusing it
    # into the register tile's scalar stores made the whole GEMM ~50% slower).
    if affine:
        for j in range(t.shape[0]):
            Y[i, j] = (np.float32(t[j]) - corr[r, j]) * alpha[j] + beta[j]
    else:
        for j in range(t.shape[0]):
            Y[i, j] = t[j]


@njit(cache=True, fastmath=True)
def _xnor_rows(A, B, k, Y, corr, alpha, beta, affine, lo, hi):
    # Row pairs lo..hi-1. A 2 × 4 register tile: each loaded word is used 4 (or 2) times; LLVM
    # vectorizes the word loop, so the eight popcount chains become vpopcntq on zmm registers.
    M, W = A.shape
    N = B.shape[0]
    n4 = N - N % 4
    L = corr.shape[0]
    T = np.empty((2, N), dtype=np.int64)
    for ib in range(lo, hi):
        i0 = 2 * ib
        if i0 + 1 == M:  # odd last row
            for j in range(N):
                T[0, j] = k - 2 * _dot(A, i0, B, j)
            _epilogue(Y, i0, T[0], corr, i0 % L, alpha, beta, affine)
            continue
        for j0 in range(0, n4, 4):
            c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = 0
            for w in range(W):
                a0, a1 = A[i0, w], A[i0 + 1, w]
                b0, b1, b2, b3 = B[j0, w], B[j0 + 1, w], B[j0 + 2, w], B[j0 + 3, w]
                c00 += np.int64(popcount(a0 ^ b0))
                c01 += np.int64(popcount(a0 ^ b1))
                c02 += np.int64(popcount(a0 ^ b2))
                c03 += np.int64(popcount(a0 ^ b3))
                c10 += np.int64(popcount(a1 ^ b0))
                c11 += np.int64(popcount(a1 ^ b1))
                c12 += np.int64(popcount(a1 ^ b2))
                c13 += np.int64(popcount(a1 ^ b3))
            if affine:
                T[0, j0], T[0, j0 + 1], T[0, j0 + 2] = k - 2 * c00, k - 2 * c01, k - 2 * c02
                T[1, j0], T[1, j0 + 1], T[1, j0 + 2] = k - 2 * c10, k - 2 * c11, k - 2 * c12
                T[0, j0 + 3], T[1, j0 + 3] = k - 2 * c03, k - 2 * c13
            else:  # the exact integer GEMM stores straight from the registers
                Y[i0, j0], Y[i0, j0 + 1], Y[i0, j0 + 2] = k - 2 * c00, k - 2 * c01, k - 2 * c02
                Y[i0 + 1, j0], Y[i0 + 1, j0 + 1] = k - 2 * c10, k - 2 * c11
                Y[i0 + 1, j0 + 2], Y[i0 + 1, j0 + 3] = k - 2 * c12, k - 2 * c13
                Y[i0, j0 + 3] = k - 2 * c03
        for j in range(n4, N):
            T[0, j] = k - 2 * _dot(A, i0, B, j)
            T[1, j] = k - 2 * _dot(A, i0 + 1, B, j)
        if not affine:
            for j in range(n4, N):
                Y[i0, j], Y[i0 + 1, j] = T[0, j], T[1, j]
            continue
        _epilogue(Y, i0, T[0], corr, i0 % L, alpha, beta, affine)
        _epilogue(Y, i0 + 1, T[1], corr, (i0 + 1) % L, alpha, beta, affine)


@njit(cache=True, parallel=True)
def _xnor_gemm(A, B, k, Y, corr, alpha, beta, affine):
    units = (A.shape[0] + 1) // 2
    chunks = min(units, CHUNKS)
    for t in prange(chunks):
        lo, hi = t * units // chunks, (t + 1) * units // chunks
        _xnor_rows(A, B, k, Y, corr, alpha, beta, affine, lo, hi)


@njit(cache=True)
def _xnor_gemm_serial(A, B, k, Y, corr, alpha, beta, affine):
    _xnor_rows(A, B, k, Y, corr, alpha, beta, affine, 0, (A.shape[0] + 1) // 2)


def _run_xnor(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    y: np.ndarray,
    corr: np.ndarray | None = None,
    alpha: np.ndarray | None = None,
    beta: np.ndarray | None = None,
) -> np.ndarray:
    _check_words(a, b, k)
    n = b.shape[0]
    affine = alpha is not None
    corr = np.zeros((1, n), np.float32) if corr is None else corr
    alpha = np.ones(n, np.float32) if alpha is None else alpha
    beta = np.zeros(n, np.float32) if beta is None else beta
    kernel = pick(_xnor_gemm, _xnor_gemm_serial, y.size * a.shape[1])
    kernel(np.ascontiguousarray(a), np.ascontiguousarray(b), int(k), y, corr, alpha, beta, affine)
    return y


def _words(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).view(np.int64))


def _transposed_words(b: np.ndarray) -> torch.Tensor:
    """``B``'s words as ``(W, N')`` with ``N'`` a multiple of 16 (the native tile width)."""
    n, w = b.shape
    bt = np.zeros((w, -(-n // 16) * 16), dtype=np.uint64)
    bt[:, :n] = b.T
    return _words(bt)


def _check_words(a: np.ndarray, b: np.ndarray, k: int) -> None:
    # Row-packed operands have ⌈K/64⌉ words; tap-packed convolution operands may have more
    # (each tap padded to whole words): any equal count that holds K bits is accepted.
    if a.shape[1] != b.shape[1] or a.shape[1] < words_for(k):
        raise ValueError(f"packed operands need equal word counts ≥ {words_for(k)} for K={k}")


def xnor_gemm(a_words: np.ndarray, b_words: np.ndarray, k: int) -> np.ndarray:
    """``C = A·Bᵀ`` for ±1 matrices given packed: ``A`` ``(M, K)``, ``B`` ``(N, K)``.

    ``C[i, j] = K − 2·Σ_w popcount(A[i, w] ⊕ B[j, w])``, exact (``int32``). Both operands must be
    packed by :func:`~modelzip.kernels.bitpack.pack_signs` with the same ``K``. Runs the AVX-512
    kernel where :func:`~modelzip.kernels._native.native` has one, else the Numba kernel.
    """
    ext = native()
    if ext is not None:
        _check_words(a_words, b_words, k)
        n = b_words.shape[0]
        return ext.xnor_gemm(_words(a_words), _transposed_words(b_words), n, int(k)).numpy()
    return xnor_gemm_numba(a_words, b_words, k)


def xnor_gemm_numba(a_words: np.ndarray, b_words: np.ndarray, k: int) -> np.ndarray:
    """:func:`xnor_gemm` on the portable Numba kernel."""
    c = np.empty((a_words.shape[0], b_words.shape[0]), dtype=np.int32)
    return _run_xnor(a_words, b_words, k, c)


def xnor_gemm_affine(
    a_words: np.ndarray,
    b_words: np.ndarray,
    k: int,
    alpha: np.ndarray,
    beta: np.ndarray,
    corr: np.ndarray | None = None,
) -> np.ndarray:
    """``Y[i, j] = (C[i, j] − corr[i mod L, j])·α_j + β_j`` (float32) with ``C`` the XNOR GEMM
    of :func:`xnor_gemm`: the layer's scale α, bias β and padding correction applied as each
    output is stored (one pass over the output)."""
    f32 = np.float32
    ext = native()
    if ext is not None:
        _check_words(a_words, b_words, k)
        n = b_words.shape[0]
        c = np.zeros((1, n), f32) if corr is None else np.ascontiguousarray(corr, dtype=f32)
        return ext.xnor_gemm_affine(
            _words(a_words), _transposed_words(b_words), n, int(k), torch.from_numpy(c),
            torch.from_numpy(np.ascontiguousarray(alpha, dtype=f32)),
            torch.from_numpy(np.ascontiguousarray(beta, dtype=f32)),
        ).numpy()  # fmt: skip
    y = np.empty((a_words.shape[0], b_words.shape[0]), dtype=f32)
    return _run_xnor(a_words, b_words, k, y, None if corr is None else corr.astype(f32),
                     alpha.astype(f32), beta.astype(f32))  # fmt: skip


@njit(cache=True, fastmath=True)
def _bwn_cols(X, neg, Y, lo, hi):
    M, K = X.shape
    for j in range(lo, hi):
        for i in range(M):
            acc = np.float32(0.0)
            for k in range(K):
                v = X[i, k]
                acc += -v if neg[j, k] else v  # a sign select: no multiply
            Y[i, j] = acc


@njit(cache=True, parallel=True)
def _bwn_gemm(X, neg, Y):
    units = neg.shape[0]
    chunks = min(units, CHUNKS)
    for t in prange(chunks):
        _bwn_cols(X, neg, Y, t * units // chunks, (t + 1) * units // chunks)


@njit(cache=True)
def _bwn_gemm_serial(X, neg, Y):
    _bwn_cols(X, neg, Y, 0, neg.shape[0])


def bwn_gemm(x: np.ndarray, w_words: np.ndarray, k: int) -> np.ndarray:
    """Binary-weight GEMM with real activations (BWN, Rastegari et al. 2016):
    ``Y[i, j] = Σ_k ±X[i, k]``, the sign from bit ``k`` of weight row ``j``: additions and
    subtractions only (the per-row scale α is applied by the caller).

    The packed weight rows are expanded to one byte per sign for the kernel (on the fly, a
    ``N × K`` byte array: 8× the packed size, still 4× smaller than float weights).
    """
    neg = unpack_bits(w_words, k).view(np.uint8)
    y = np.empty((x.shape[0], w_words.shape[0]), dtype=np.float32)
    pick(_bwn_gemm, _bwn_gemm_serial, y.size * k)(np.ascontiguousarray(x, dtype=np.float32), neg, y)
    return y


@njit(cache=True)
def _pack_pixel_rows(x, out, lo, hi):
    # x: (B, C, H, W) float32, any strides (NCHW or channels-last); out: (B, H, W, cw) words.
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for b in range(lo, hi):
        for h in range(H):
            for w in range(W):
                for q in range(out.shape[3]):
                    word = np.uint64(0)
                    for c in range(64 * q, min(C, 64 * q + 64)):
                        if x[b, c, h, w] < 0:
                            word |= np.uint64(1) << np.uint64(c - 64 * q)
                    out[b, h, w, q] = word


@njit(cache=True, parallel=True)
def _pack_pixels(x, out):
    units = x.shape[0]
    chunks = min(units, CHUNKS)
    for t in prange(chunks):
        _pack_pixel_rows(x, out, t * units // chunks, (t + 1) * units // chunks)


@njit(cache=True)
def _pack_pixels_serial(x, out):
    _pack_pixel_rows(x, out, 0, x.shape[0])


def pack_pixels(x: torch.Tensor) -> np.ndarray:
    """Sign bits of ``x`` (``B, C, H, W``) packed along the channels at every pixel:
    ``uint64`` array ``(B, H, W, ⌈C/64⌉)`` (the layout of daBNN and Larq Compute Engine).
    One pass over ``x`` in either memory format; no intermediate boolean tensor."""
    b, c, h, w = x.shape
    out = np.empty((b, h, w, words_for(c)), dtype=np.uint64)
    xn = x.detach().float().cpu().numpy()
    pick(_pack_pixels, _pack_pixels_serial, xn.size)(xn, out)
    return out


def conv_output_hw(hw: tuple[int, int], *pairs: tuple[int, int]) -> tuple[int, int]:
    """A conv's output ``(H, W)`` on input ``hw``, given kernel size, stride, padding, dilation."""
    out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(hw, *pairs, strict=True)]
    return out[0], out[1]


def im2col_words(
    words: np.ndarray,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> np.ndarray:
    """Packed im2col on channel words: ``(B·OH·OW, kh·kw·cw)``, taps in ``(ky, kx)`` order.
    Padded pixels are all-zero words (+1); :func:`binary_conv2d` subtracts their share.
    A strided view of the padded word image, copied once: no per-bit work."""
    b, h, w, cw = words.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    padded = np.zeros((b, h + 2 * ph, w + 2 * pw, cw), dtype=np.uint64)
    padded[:, ph : ph + h, pw : pw + w] = words
    oh, ow = conv_output_hw((h, w), kernel_size, stride, padding, dilation)
    s = padded.strides
    view = np.lib.stride_tricks.as_strided(
        padded,
        shape=(b, oh, ow, kh, kw, cw),
        strides=(s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]),
        writeable=False,
    )
    return view.reshape(b * oh * ow, kh * kw * cw)


def pack_conv_weight(weight: torch.Tensor) -> np.ndarray:
    """Sign words of a conv weight (``O, C, kh, kw``) in the tap layout of
    :func:`im2col_words`: ``(O, kh·kw·⌈C/64⌉)``."""
    o = weight.shape[0]
    return pack_bits((weight.detach() < 0).permute(0, 2, 3, 1).cpu().numpy()).reshape(o, -1)


def padding_correction(
    w_signs: torch.Tensor,
    in_hw: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """``Σ_{padded taps} w`` per output position and channel (``L × O``, float32): what the +1
    padding bits add to the XNOR count, so that ``conv(sign x, sign w)`` with zero padding is
    exact."""
    ones = torch.ones(1, w_signs.shape[1], *in_hw, dtype=torch.float64)
    valid = F.conv2d(ones, w_signs.double(), None, stride, padding, dilation)[0]
    total = w_signs.double().sum(dim=(1, 2, 3)).reshape(-1, 1, 1)
    return (total - valid).reshape(w_signs.shape[0], -1).t().float().contiguous()


def binary_conv2d(
    x: torch.Tensor,
    w_words: np.ndarray,
    weight_shape: tuple[int, int, int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    correction: torch.Tensor | None,
    alpha: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``α ⊙ conv2d(sign x, sign w) + b`` (zero padding, groups 1) as packed im2col + XNOR
    GEMM; exact before the scale.

    ``w_words`` come from :func:`pack_conv_weight`; ``correction`` is :func:`padding_correction`
    for this input size (``None`` when unpadded). Channel padding bits are 0 in both operands,
    so ``K = C·kh·kw`` in ``K − 2·popcount`` removes them. The result is float32, NCHW.
    """
    o, c, kh, kw = weight_shape
    cols = im2col_words(pack_pixels(x), (kh, kw), stride, padding, dilation)
    b, (oh, ow) = x.shape[0], conv_output_hw(x.shape[2:], (kh, kw), stride, padding, dilation)
    ones, zeros = np.ones(o, np.float32), np.zeros(o, np.float32)
    y = xnor_gemm_affine(
        cols,
        w_words,
        c * kh * kw,
        ones if alpha is None else alpha.detach().cpu().numpy(),
        zeros if bias is None else bias.detach().cpu().numpy(),
        None if correction is None else correction.numpy(),
    )
    return torch.from_numpy(y).reshape(b, oh, ow, o).permute(0, 3, 1, 2).contiguous()


__all__ = [
    "binary_conv2d",
    "bwn_gemm",
    "im2col_words",
    "pack_bits",
    "pack_conv_weight",
    "pack_pixels",
    "padding_correction",
    "xnor_gemm",
    "xnor_gemm_affine",
    "xnor_gemm_numba",
]
