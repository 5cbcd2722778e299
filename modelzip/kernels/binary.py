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
from modelzip.kernels._native import native, selected_isa
from modelzip.kernels.bitpack import pack_bits, unpack_bits, words_for

#: Below this many words per row the AVX2 build's XNOR GEMM loses to the Numba kernel (scalar
#: ``popcnt`` in a 2 × 4 register tile): its 1 × 16 tiles and panel copy cost more than the
#: nibble-lookup popcount saves. Measured single-thread on an AMD EPYC (AVX2), ms, native vs
#: Numba: 4096×50×500 (LeNet-5's conv2, 8 words) 2.7 vs 1.2; 64×500×800 (fc1) 0.28 vs 0.15;
#: 4096×128×800 6.3 vs 2.7; 64×1024×4096 (64 words) 1.24 vs 1.18; 256×256×4096 1.31 vs 1.55.
AVX2_NATIVE_MIN_WORDS = 64


def _native_for(words: int) -> object | None:
    """The native extension where it is the faster XNOR GEMM for rows of ``words`` words."""
    ext = native()
    if ext is not None and selected_isa() == "avx2" and words < AVX2_NATIVE_MIN_WORDS:
        return None
    return ext


@njit(cache=True, inline="always")
def _dot(A, i, B, j):
    acc = 0
    for w in range(A.shape[1]):
        acc += np.int64(popcount(A[i, w] ^ B[j, w]))
    return acc


@njit(cache=True, inline="always")
def _epilogue(Y, i, t, corr, r, alpha, beta, affine, rows):
    # One row of the output from its integer dot products t: (t − corr[r])·α (·rows[i]) + β, or
    # t itself for the exact integer GEMM; rows (a per-row scale, XNOR-Net's K) may be empty.
    # A separate, vectorized pass over a row still in L1 (fusing it
    # into the register tile's scalar stores made the whole GEMM ~50% slower).
    if affine and rows.shape[0] > 0:
        s = rows[i]
        for j in range(t.shape[0]):
            Y[i, j] = (np.float32(t[j]) - corr[r, j]) * alpha[j] * s + beta[j]
    elif affine:
        for j in range(t.shape[0]):
            Y[i, j] = (np.float32(t[j]) - corr[r, j]) * alpha[j] + beta[j]
    else:
        for j in range(t.shape[0]):
            Y[i, j] = t[j]


@njit(cache=True, fastmath=True)
def _xnor_rows(A, B, k, Y, corr, alpha, beta, affine, rows, lo, hi):
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
            _epilogue(Y, i0, T[0], corr, i0 % L, alpha, beta, affine, rows)
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
        _epilogue(Y, i0, T[0], corr, i0 % L, alpha, beta, affine, rows)
        _epilogue(Y, i0 + 1, T[1], corr, (i0 + 1) % L, alpha, beta, affine, rows)


@njit(cache=True, parallel=True)
def _xnor_gemm(A, B, k, Y, corr, alpha, beta, affine, rows):
    units = (A.shape[0] + 1) // 2
    chunks = min(units, CHUNKS)
    for t in prange(chunks):
        lo, hi = t * units // chunks, (t + 1) * units // chunks
        _xnor_rows(A, B, k, Y, corr, alpha, beta, affine, rows, lo, hi)


@njit(cache=True)
def _xnor_gemm_serial(A, B, k, Y, corr, alpha, beta, affine, rows):
    _xnor_rows(A, B, k, Y, corr, alpha, beta, affine, rows, 0, (A.shape[0] + 1) // 2)


def _run_xnor(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    y: np.ndarray,
    corr: np.ndarray | None = None,
    alpha: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    _check_words(a, b, k)
    n = b.shape[0]
    affine = alpha is not None
    corr = np.zeros((1, n), np.float32) if corr is None else corr
    alpha = np.ones(n, np.float32) if alpha is None else alpha
    beta = np.zeros(n, np.float32) if beta is None else beta
    kernel = pick(_xnor_gemm, _xnor_gemm_serial, y.size * a.shape[1])
    rows = np.empty(0, np.float32) if rows is None else np.ascontiguousarray(rows, np.float32)
    kernel(np.ascontiguousarray(a), np.ascontiguousarray(b), int(k), y, corr, alpha, beta, affine,
           rows)  # fmt: skip
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
    ext = _native_for(a_words.shape[1])
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
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """``Y[i, j] = (C[i, j] − corr[i mod L, j])·α_j (·s_i) + β_j`` (float32) with ``C`` the XNOR
    GEMM of :func:`xnor_gemm`: the layer's scale α, bias β, padding correction and, given
    ``rows``, a per-row scale ``s`` (XNOR-Net's ``K``/``β``) applied as each output is stored."""
    f32 = np.float32
    ext = _native_for(a_words.shape[1])
    if ext is not None:
        _check_words(a_words, b_words, k)
        n = b_words.shape[0]
        c = np.zeros((1, n), f32) if corr is None else np.ascontiguousarray(corr, dtype=f32)
        scale = np.empty(0, f32) if rows is None else np.ascontiguousarray(rows, dtype=f32)
        return ext.xnor_gemm_affine(
            _words(a_words), _transposed_words(b_words), n, int(k), torch.from_numpy(c),
            torch.from_numpy(np.ascontiguousarray(alpha, dtype=f32)),
            torch.from_numpy(np.ascontiguousarray(beta, dtype=f32)), torch.from_numpy(scale),
        ).numpy()  # fmt: skip
    y = np.empty((a_words.shape[0], b_words.shape[0]), dtype=f32)
    return _run_xnor(a_words, b_words, k, y, None if corr is None else corr.astype(f32),
                     alpha.astype(f32), beta.astype(f32), rows)  # fmt: skip


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
    :func:`im2col_words`: ``(O, kh·kw·⌈C/64⌉)`` (what a :class:`~.layers.BinaryConv2d` stores)."""
    o = weight.shape[0]
    return pack_bits((weight.detach() < 0).permute(0, 2, 3, 1).cpu().numpy()).reshape(o, -1)


def pack_conv_rows(weight: torch.Tensor) -> np.ndarray:
    """Sign words of a conv weight (``O, C, kh, kw``) in the bit-stream layout of
    :func:`sign_im2col`: each row's ``C·kh·kw`` bits back to back, ``(ky, kx, c)`` order,
    ``(O, ⌈C·kh·kw/64⌉)``. Fewer words than the tap layout whenever ``C`` is not a multiple of
    64 (LeNet-5's ``conv2``: 8 words instead of 25), so the XNOR GEMM does that much less work."""
    o = weight.shape[0]
    return pack_bits((weight.detach() < 0).permute(0, 2, 3, 1).reshape(o, -1).cpu().numpy())


@njit(cache=True, fastmath=True)
def _sign_im2col_rows(x, geo, out, scale, lo, hi):
    # x: (B, H, W, C) float32, C-contiguous (the channels-last image); out: (B·OH·OW, words)
    # uint64; scale: (B·OH·OW,) float32 or empty. Per image: (1) the sign bits of each
    # pixel's channels packed into words of a zero-bordered pixel grid (padding = bit 0 = +1),
    # with the mean |x| over the channels when the K map is asked for; (2) per output position
    # its taps' channel bits appended into one bit stream, and the box mean of the |x| map
    # over the same taps (XNOR-Net's K).
    _, H, W, C = x.shape
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = geo
    cw = (C + 63) // 64
    nw = out.shape[1]
    want_k = scale.shape[0] > 0
    pix = np.zeros((H + 2 * ph, W + 2 * pw, cw), dtype=np.uint64)
    amap = np.zeros((H + 2 * ph, W + 2 * pw), dtype=np.float32)
    nc, taps = np.float32(C), np.float32(kh * kw)
    one = np.uint64(1)
    for b in range(lo, hi):
        for h in range(H):
            for w in range(W):
                total = np.float32(0.0)
                for q in range(cw):
                    word = np.uint64(0)
                    for c in range(64 * q, min(C, 64 * q + 64)):
                        v = x[b, h, w, c]
                        if v < 0:
                            word |= one << np.uint64(c - 64 * q)
                        total += abs(v)
                    pix[h + ph, w + pw, q] = word
                amap[h + ph, w + pw] = total / nc
        for oy in range(oh):
            for ox in range(ow):
                r = (b * oh + oy) * ow + ox
                for j in range(nw):
                    out[r, j] = 0
                pos = 0
                box = np.float32(0.0)
                for ky in range(kh):
                    iy = oy * sh + ky * dh
                    for kx in range(kw):
                        ix = ox * sw + kx * dw
                        box += amap[iy, ix]
                        left = C
                        for q in range(cw):
                            v = pix[iy, ix, q]
                            n = min(64, left)
                            left -= n
                            idx, off = pos >> 6, pos & 63
                            out[r, idx] |= v << np.uint64(off)
                            if off != 0 and off + n > 64:
                                out[r, idx + 1] |= v >> np.uint64(64 - off)
                            pos += n
                if want_k:
                    scale[r] = box / taps  # divided after summing: K of ±1 is 1


@njit(cache=True, parallel=True)
def _sign_im2col(x, geo, out, scale):
    units = x.shape[0]
    chunks = min(units, CHUNKS)
    for t in prange(chunks):
        _sign_im2col_rows(x, geo, out, scale, t * units // chunks, (t + 1) * units // chunks)


@njit(cache=True)
def _sign_im2col_serial(x, geo, out, scale):
    _sign_im2col_rows(x, geo, out, scale, 0, x.shape[0])


def sign_im2col(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    k_map: bool = False,
    pool: bool = False,
    clamp: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``sign(x)``'s packed im2col in one compiled pass over ``x`` (``B, C, H, W``, NCHW or
    channels-last, float32): ``(B·OH·OW, ⌈C·kh·kw/64⌉)`` words, each row its taps' bits back to
    back in ``(ky, kx, c)`` order (the layout of :func:`pack_conv_rows`); padded pixels are
    0 bits (+1), which :func:`padding_correction` removes. With ``k_map`` also XNOR-Net's
    ``K`` per output position (``B·OH·OW``, float32; see
    :func:`~modelzip.kernels.layers.xnor_input_scale`), from the same pass. With ``pool`` the
    layer reads ``x``'s 2×2 max pooling (stride 2) and with ``clamp`` its hardtanh, both done in
    the same pass (the pooled image is never written). The native kernels run it where they
    can (:func:`~modelzip.kernels._native.native`), Numba elsewhere."""
    b, c, h, w = x.shape
    hw = (h // 2, w // 2) if pool else (h, w)
    oh, ow = conv_output_hw(hw, kernel_size, stride, padding, dilation)
    geo = np.array([*kernel_size, *stride, *padding, *dilation, oh, ow], dtype=np.int64)
    nw = words_for(c * kernel_size[0] * kernel_size[1])
    # Channels-last: each pixel's channels contiguous (a copy only for an NCHW input).
    xn = x.detach().float().cpu().contiguous(memory_format=torch.channels_last)
    ext = native()
    if ext is not None:
        words, scale_t = ext.sign_im2col(xn.permute(0, 2, 3, 1), torch.from_numpy(geo), nw,
                                         2 if pool else 1, clamp, k_map)  # fmt: skip
        return words.numpy().view(np.uint64), (scale_t.numpy() if k_map else None)
    if pool or clamp:  # the portable pass reads the layer's input itself
        xn = F.max_pool2d(xn, 2) if pool else xn
        xn = xn.clamp(-1.0, 1.0) if clamp else xn
        xn = xn.contiguous(memory_format=torch.channels_last)
    out = np.empty((b * oh * ow, nw), np.uint64)
    scale = np.empty(b * oh * ow if k_map else 0, np.float32)
    xn_np = xn.permute(0, 2, 3, 1).numpy()
    pick(_sign_im2col, _sign_im2col_serial, xn_np.size + out.size * 8)(xn_np, geo, out, scale)
    return out, (scale if k_map else None)


def sign_pack_rows(
    x: torch.Tensor, abs_mean: bool = False, clamp: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """``sign(x)`` packed along the last axis of ``x`` (``M × K`` float32) and, with
    ``abs_mean``, each row's mean ``|x|`` (XNOR-Net's ``β``; ``|x|`` clipped at 1 with
    ``clamp``, for an input that passed a hardtanh), in one pass where the native kernels run."""
    x2 = x.detach().float().cpu().contiguous()
    ext = native()
    if ext is not None:
        words, mean = ext.sign_pack(x2, abs_mean, clamp)
        return words.numpy().view(np.uint64), (mean.numpy() if abs_mean else None)
    a = x2.numpy()
    mean = None
    if abs_mean:
        mag = np.abs(a)
        mean = (np.minimum(mag, 1.0) if clamp else mag).mean(-1, dtype=np.float32)
    return pack_bits(a < 0), mean


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
    act_scale: bool = False,
    pool: bool = False,
    clamp: bool = False,
) -> torch.Tensor:
    """``α ⊙ conv2d(sign x, sign w) (⊙ K) + b`` (zero padding, groups 1) as one fused
    sign/pack/im2col pass (:func:`sign_im2col`) and the XNOR GEMM; exact before the scales.

    ``w_words`` come from :func:`pack_conv_rows`; ``correction`` is :func:`padding_correction`
    for this input size (``None`` when unpadded). Padding bits are 0 in both operands, so
    ``K = C·kh·kw`` in ``K − 2·popcount`` removes them. With ``act_scale`` the output is also
    multiplied by XNOR-Net's ``K`` map (from the same pass over ``x``) before the bias. The
    result is float32 in channels-last memory order (the GEMM's rows are pixels), so the
    caller can take it as is or make it NCHW-contiguous. ``pool`` and ``clamp``: the layer's
    input is ``x``'s 2×2 max pool and/or hardtanh, read in the same pass (:func:`sign_im2col`)."""
    o, c, kh, kw = weight_shape
    cols, k_map = sign_im2col(x, (kh, kw), stride, padding, dilation, act_scale, pool, clamp)
    hw = (x.shape[2] // 2, x.shape[3] // 2) if pool else x.shape[2:]
    b, (oh, ow) = x.shape[0], conv_output_hw(hw, (kh, kw), stride, padding, dilation)
    f32 = np.float32
    a = np.ones(o, f32) if alpha is None else alpha.detach().cpu().numpy().astype(f32)
    beta = np.zeros(o, f32) if bias is None else bias.detach().cpu().numpy().astype(f32)
    corr = None if correction is None else correction.numpy()
    # The K map scales before the bias: ((t − corr)·α)·K + b, as each output is stored.
    y = xnor_gemm_affine(cols, w_words, c * kh * kw, a, beta, corr, k_map)
    return torch.from_numpy(y).reshape(b, oh, ow, o).permute(0, 3, 1, 2)


__all__ = [
    "binary_conv2d",
    "bwn_gemm",
    "im2col_words",
    "pack_bits",
    "pack_conv_rows",
    "pack_conv_weight",
    "padding_correction",
    "sign_im2col",
    "sign_pack_rows",
    "xnor_gemm",
    "xnor_gemm_affine",
    "xnor_gemm_numba",
]
