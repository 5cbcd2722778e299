"""The AVX-512 kernels equal the portable Numba kernels (exactly where the arithmetic is integer)
on odd sizes, and the portable path is what runs when the native one is unavailable."""

from __future__ import annotations

import numpy as np
import pytest

from modelzip.kernels import _native
from modelzip.kernels.binary import _run_xnor, xnor_gemm, xnor_gemm_affine, xnor_gemm_numba
from modelzip.kernels.bitpack import pack_signs
from modelzip.kernels.sparse import BSRMatrix, bsr_matmul, bsr_matmul_numba

needs_native = pytest.mark.skipif(
    _native.unavailable_reason() is not None,
    reason=f"native kernels unavailable: {_native.unavailable_reason()}",
)


@needs_native
def test_the_native_extension_builds_on_this_cpu() -> None:
    assert _native.native() is not None  # a CPU with AVX-512 VPOPCNTDQ and a compiler


@needs_native
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (9, 17, 63), (37, 53, 130), (64, 33, 1000)])
def test_native_xnor_gemm_equals_numba(m: int, n: int, k: int) -> None:
    rng = np.random.default_rng(m * n)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((n, k))
    pa, pb = pack_signs(a), pack_signs(b)
    native = xnor_gemm(pa, pb, k)
    np.testing.assert_array_equal(native, xnor_gemm_numba(pa, pb, k))
    np.testing.assert_array_equal(native, (np.sign(a + 1e-30) @ np.sign(b + 1e-30).T))
    alpha = rng.random(n).astype(np.float32) + 0.5
    beta = rng.standard_normal(n).astype(np.float32)
    corr = rng.integers(0, 5, (3, n)).astype(np.float32)  # rows cycle through L = 3
    y = xnor_gemm_affine(pa, pb, k, alpha, beta, corr)
    ref = _run_xnor(pa, pb, k, np.empty((m, n), np.float32), corr, alpha, beta)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-4)


@needs_native
@pytest.mark.parametrize(("m", "k", "cols"), [(4, 4, 1), (37, 53, 7), (64, 44, 70), (130, 8, 129)])
def test_native_bsr_equals_numba(m: int, k: int, cols: int) -> None:
    rng = np.random.default_rng(m + cols)
    mask = rng.random((-(-m // 4), -(-k // 4))) < 0.4
    w = rng.standard_normal((m, k)).astype(np.float32) * np.kron(mask, np.ones((4, 4)))[:m, :k]
    bsr = BSRMatrix.from_dense(w.astype(np.float32), (4, 4))
    x = rng.standard_normal((k, cols)).astype(np.float32)
    xp = np.zeros((-(-k // 4) * 4, cols), np.float32)
    xp[:k] = x
    y = bsr_matmul(bsr, x)
    np.testing.assert_allclose(y, bsr_matmul_numba(bsr, xp)[:m], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(y, w.astype(np.float64) @ x, rtol=1e-4, atol=1e-3)


def test_disabled_native_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELZIP_NATIVE", "0")
    assert _native.unavailable_reason() == "disabled by MODELZIP_NATIVE=0"
    monkeypatch.setattr(_native, "cpu_flags", lambda: {"avx2"})
    monkeypatch.delenv("MODELZIP_NATIVE")
    assert "avx512f" in (_native.unavailable_reason() or "")


def test_a_stale_build_lock_is_removed(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from torch.utils import cpp_extension

    monkeypatch.setenv("MODELZIP_CACHE", str(tmp_path))
    digest = _native.source_digest()
    lock = tmp_path / "native" / digest / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    os.utime(lock, (0, 0))  # a build killed long ago
    seen = {}

    def fake_load(**kw):  # record what the build would meet, without compiling
        seen["lock"] = (tmp_path / "native" / digest / "lock").exists()
        return "ext"

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    _native._build.cache_clear()
    try:
        assert _native._build() == "ext" and seen["lock"] is False
    finally:
        _native._build.cache_clear()
