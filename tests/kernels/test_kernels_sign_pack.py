"""Sign packing of real activations for the XNOR kernels: the native pass (both builds where
the CPU runs them) against the portable Numba/NumPy one, bit for bit; the fused 2×2 max pool and
hardtanh clamp against PyTorch's ops run first; the row-scaled affine XNOR GEMM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modelzip.kernels import binary
from modelzip.kernels._native import native
from modelzip.kernels.binary import sign_im2col, sign_pack_rows, xnor_gemm_affine
from modelzip.kernels.bitpack import pack_signs

NATIVE = native()
needs_native = pytest.mark.skipif(NATIVE is None, reason="no native build runs on this CPU")

# (channels, kernel, stride, padding, dilation): whole 32-bit taps (C = 32, 64, 96) and the
# bit-shifting path (C = 3, 20, 65), with padding, stride and dilation.
CASES = [
    (32, (5, 5), (1, 1), (0, 0), (1, 1)),
    (64, (3, 3), (1, 1), (1, 1), (1, 1)),
    (96, (3, 2), (2, 1), (1, 0), (1, 2)),
    (3, (3, 3), (1, 1), (1, 1), (1, 1)),
    (20, (5, 5), (1, 1), (0, 0), (1, 1)),
    (65, (2, 3), (1, 2), (0, 1), (2, 1)),
]


def _portable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binary, "native", lambda: None)


@needs_native
@pytest.mark.parametrize(("c", "kernel", "stride", "padding", "dilation"), CASES)
@pytest.mark.parametrize(("pool", "clamp"), [(False, False), (True, True), (False, True)])
def test_native_sign_im2col_matches_portable(
    monkeypatch: pytest.MonkeyPatch,
    c: int,
    kernel: tuple,
    stride: tuple,
    padding: tuple,
    dilation: tuple,
    pool: bool,
    clamp: bool,
) -> None:
    x = 1.5 * torch.randn(3, c, 13, 11, generator=torch.Generator().manual_seed(c))
    x[0, :, 0, 0] = 0.0  # sign(0) = +1
    x = x.contiguous(memory_format=torch.channels_last) if c % 2 else x
    words, k = sign_im2col(x, kernel, stride, padding, dilation, True, pool, clamp)
    _portable(monkeypatch)
    ref_words, ref_k = sign_im2col(x, kernel, stride, padding, dilation, True, pool, clamp)
    assert words.dtype == np.uint64 and np.array_equal(words, ref_words)
    assert k is not None and ref_k is not None
    np.testing.assert_allclose(k, ref_k, rtol=2e-6)


@pytest.mark.parametrize("native_pass", [True, False])
def test_fused_pool_and_clamp_equal_the_ops_run_first(
    monkeypatch: pytest.MonkeyPatch, native_pass: bool
) -> None:
    """Reading a 2×2 max pool and a hardtanh inside the pass gives the im2col of the pooled,
    clamped image (odd sizes: the last row and column are dropped, as max_pool2d does)."""
    if native_pass and NATIVE is None:
        pytest.skip("no native build runs on this CPU")
    if not native_pass:
        _portable(monkeypatch)
    x = 2 * torch.randn(2, 32, 15, 12, generator=torch.Generator().manual_seed(3))
    x = x.contiguous(memory_format=torch.channels_last)
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    words, k = sign_im2col(x, *geo, k_map=True, pool=True, clamp=True)
    pooled = F.hardtanh(F.max_pool2d(x, 2))
    ref_words, ref_k = sign_im2col(pooled, *geo, k_map=True)
    assert np.array_equal(words, ref_words)
    assert k is not None and ref_k is not None
    np.testing.assert_allclose(k, ref_k, rtol=2e-6)


@pytest.mark.parametrize("k", [1, 7, 64, 100, 1024])
@pytest.mark.parametrize("clamp", [False, True])
def test_sign_pack_rows(monkeypatch: pytest.MonkeyPatch, k: int, clamp: bool) -> None:
    x = 2 * torch.randn(9, k, generator=torch.Generator().manual_seed(k))
    x[0, 0] = -0.0  # x < 0 is False: bit 0 (+1), as pack_signs
    mag = x.abs().clamp(max=1.0) if clamp else x.abs()
    for run_native in (True, False):
        if not run_native:
            _portable(monkeypatch)
        words, mean = sign_pack_rows(x, abs_mean=True, clamp=clamp)
        assert np.array_equal(words, pack_signs(x))
        assert mean is not None
        np.testing.assert_allclose(mean, mag.mean(1).numpy(), rtol=2e-6)
        assert sign_pack_rows(x)[1] is None


@needs_native
def test_row_scaled_affine_gemm_matches_portable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``((t − corr)·α)·s_i + β`` with a per-row scale, native (in the kernel's entry point)
    against the Numba epilogue."""
    r = np.random.default_rng(0)
    a, b = r.standard_normal((37, 300)), r.standard_normal((21, 300))
    alpha, beta = r.random(21).astype(np.float32), r.standard_normal(21).astype(np.float32)
    rows = r.random(37).astype(np.float32)
    y = xnor_gemm_affine(pack_signs(a), pack_signs(b), 300, alpha, beta, None, rows)
    ref = (np.where(a < 0, -1.0, 1.0) @ np.where(b < 0, -1.0, 1.0).T) * alpha * rows[:, None] + beta
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
    _portable(monkeypatch)
    monkeypatch.setattr(binary, "_native_for", lambda words: None)
    y2 = xnor_gemm_affine(pack_signs(a), pack_signs(b), 300, alpha, beta, None, rows)
    np.testing.assert_allclose(y, y2, rtol=1e-6, atol=1e-5)
