"""The native kernels — the AVX-512 build and the AVX2 one — equal the portable Numba kernels
(exactly where the arithmetic is integer) on odd and empty sizes, the run-time dispatch picks the
best build the CPU can run, and the portable path runs when none can.

Each build is tested where the CPU can run it (``MODELZIP_NATIVE=avx2`` limits the tests to the
AVX2 build, as it limits the library; ``0`` skips them all)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from modelzip.core.geometry import ConvGeometry
from modelzip.decompose.tt import TTConv2d
from modelzip.kernels import _native
from modelzip.kernels.binary import _run_xnor, xnor_gemm, xnor_gemm_affine, xnor_gemm_numba
from modelzip.kernels.bitpack import pack_signs
from modelzip.kernels.sparse import BSRMatrix, bsr_matmul, bsr_matmul_numba
from modelzip.kernels.tt_conv import FusedTTConv2d

AVX512_CPU = frozenset((*_native.NEEDED_FLAGS, *_native.AVX2_FLAGS, "sse4_2"))
AVX2_CPU = frozenset((*_native.AVX2_FLAGS, "avx", "sse4_2"))


def _skip_reason(isa: str) -> str | None:
    """Why this process cannot test build ``isa``, or None."""
    env = os.environ.get("MODELZIP_NATIVE", "1").strip().lower()
    if env == "0":
        return "disabled by MODELZIP_NATIVE=0"
    if env not in _native.AUTO and env != isa:
        return f"MODELZIP_NATIVE={env} runs another build"
    missing = [f for f in _native.BUILDS[isa].needed if f not in _native.cpu_flags()]
    return f"the CPU lacks {', '.join(missing)}" if missing else None


@pytest.fixture(params=list(_native.BUILDS))
def build(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each build this CPU can run, selected through ``MODELZIP_NATIVE`` (the kernels follow it
    per call) and compiled (once per source version, then loaded from the cache)."""
    isa = request.param
    reason = _skip_reason(isa)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("MODELZIP_NATIVE", isa)
    assert _native.selected_isa() == isa and _native.unavailable_reason() is None
    ext = _native.native()
    assert ext is not None  # a CPU with the build's flags and a compiler
    assert ext.__name__.startswith(f"modelzip_{isa}_")
    return isa


def test_each_build_has_the_whole_interface(build: str) -> None:
    ext = _native.native()
    for name in ("xnor_gemm", "xnor_gemm_affine", "bsr4_matmul", "tt_conv2d"):
        assert callable(getattr(ext, name))


# K: below one word, odd words, whole words, each remainder of 4 words (the AVX2 kernel adds 4
# words at a time), 124 words (one run of its byte counters) and beyond; M and N: empty, one, and
# not multiples of the tiles; M from 8 up copies B into panels first (AVX2).
XNOR_SHAPES = [(1, 1, 1), (9, 17, 63), (37, 53, 130), (64, 33, 1000), (0, 5, 70), (3, 0, 70),
               (1, 40, 256), (5, 24, 64 * 31), (8, 9, 64 * 31 + 1), (13, 16, 64 * 62 + 5),
               (2, 7, 4099), (7, 300, 64 * 124), (20, 3, 64 * 131 + 5)]  # fmt: skip


@pytest.mark.parametrize(("m", "n", "k"), XNOR_SHAPES)
def test_native_xnor_gemm_equals_numba(build: str, m: int, n: int, k: int) -> None:
    rng = np.random.default_rng(m * n + k)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((n, k))
    pa, pb = pack_signs(a), pack_signs(b)
    native = xnor_gemm(pa, pb, k)
    assert native.dtype == np.int32 and native.shape == (m, n)
    np.testing.assert_array_equal(native, xnor_gemm_numba(pa, pb, k))
    np.testing.assert_array_equal(native, (np.sign(a + 1e-30) @ np.sign(b + 1e-30).T))
    alpha = rng.random(n).astype(np.float32) + 0.5
    beta = rng.standard_normal(n).astype(np.float32)
    corr = rng.integers(0, 5, (3, n)).astype(np.float32)  # rows cycle through L = 3
    y = xnor_gemm_affine(pa, pb, k, alpha, beta, corr)
    ref = _run_xnor(pa, pb, k, np.empty((m, n), np.float32), corr, alpha, beta)
    assert y.dtype == np.float32 and y.shape == (m, n)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-4)
    y = xnor_gemm_affine(pa, pb, k, alpha, beta)  # no correction
    np.testing.assert_allclose(y, native * alpha + beta, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("k", [64 * 31, 64 * 93 + 7, 64 * 124, 64 * 131 + 5, 20000])
@pytest.mark.parametrize("m", [5, 9])
def test_native_xnor_gemm_counts_every_bit(build: str, m: int, k: int) -> None:
    # Operands that agree or disagree on every bit: each byte of every word counts 8, the most
    # the AVX2 kernel's byte counters hold between folds (random bits stay far below it).
    rng = np.random.default_rng(k)
    a = rng.choice([-1.0, 1.0], (m, k))
    b = np.concatenate([a, -a, a[:1], -a[:1]])
    c = xnor_gemm(pack_signs(a), pack_signs(b), k)
    np.testing.assert_array_equal(np.diag(c[:, :m]), np.full(m, k))
    np.testing.assert_array_equal(c[:, m : 2 * m], -c[:, :m])
    np.testing.assert_array_equal(c, (a @ b.T).astype(np.int32))


@pytest.mark.parametrize(
    ("m", "k", "cols", "density"),
    [(4, 4, 1, 0.4), (37, 53, 7, 0.4), (64, 44, 70, 0.4), (130, 8, 129, 0.4), (1, 9, 24, 1.0),
     (16, 16, 25, 0.5), (12, 20, 48, 0.3), (20, 40, 17, 0.0), (8, 12, 0, 0.5), (9, 33, 64, 0.1)],
)  # fmt: skip
def test_native_bsr_equals_numba(build: str, m: int, k: int, cols: int, density: float) -> None:
    rng = np.random.default_rng(m + cols)
    mask = rng.random((-(-m // 4), -(-k // 4))) < density
    w = rng.standard_normal((m, k)).astype(np.float32) * np.kron(mask, np.ones((4, 4)))[:m, :k]
    bsr = BSRMatrix.from_dense(w.astype(np.float32), (4, 4))
    x = rng.standard_normal((k, cols)).astype(np.float32)
    xp = np.zeros((-(-k // 4) * 4, cols), np.float32)
    xp[:k] = x
    y = bsr_matmul(bsr, x)
    assert y.shape == (m, cols)
    np.testing.assert_allclose(y, bsr_matmul_numba(bsr, xp)[:m], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(y, w.astype(np.float64) @ x, rtol=1e-4, atol=1e-3)


# (in, out, in_modes, out_modes, ranks, kernel, padding, dilation, input H×W, bias)
TT_GEOMETRIES: list[tuple[Any, ...]] = [
    (64, 64, (4, 4, 4), (4, 4, 4), (3, 5, 6, 1), 3, 1, 1, (9, 11), True),  # "same": flat tiles
    (30, 20, (4, 8), (4, 6), (4, 7, 1), 3, 0, 1, (13, 21), True),  # padded modes, row tiles
    (12, 27, (2, 2, 3), (3, 3, 3), (11, 3, 4, 1), (3, 5), (2, 1), (2, 1), (7, 20), False),  # r0 > 8
    (16, 16, (4, 4), (4, 4), (2, 5, 1), 1, 0, 1, (1, 1), True),  # 1×1 on one pixel
    (64, 64, (4, 4, 4), (4, 4, 4), (2, 4, 4, 1), 3, 1, 1, (10, 10), True),  # N multiple of 16
]


@pytest.mark.parametrize("geometry", TT_GEOMETRIES, ids=lambda g: f"{g[0]}to{g[1]}k{g[5]}p{g[6]}")
@pytest.mark.parametrize("batch", [1, 3])
def test_native_tt_conv_equals_the_chain(build: str, geometry: tuple[Any, ...], batch: int) -> None:
    i, o, im, om, ranks, k, pad, dil, hw, bias = geometry
    torch.manual_seed(batch)
    layer = TTConv2d(ConvGeometry(i, o, k, padding=pad, dilation=dil), im, om, ranks, bias=bias)
    for p in layer.parameters():
        nn.init.normal_(p, std=0.5)
    layer.eval()
    fused = FusedTTConv2d.from_tt(layer).eval()
    x = torch.randn(batch, i, *hw)
    with torch.no_grad():
        assert fused.fused_unavailable(x) is None
        y, ref = fused(x), layer(x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_the_builds_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    usable = [isa for isa in _native.BUILDS if _skip_reason(isa) is None]
    if len(usable) < 2:
        pytest.skip("needs a CPU (and MODELZIP_NATIVE) that runs both builds")
    rng = np.random.default_rng(7)
    pa, pb = (
        pack_signs(rng.standard_normal((23, 3000))),
        pack_signs(rng.standard_normal((45, 3000))),
    )
    w = rng.standard_normal((30, 50)).astype(np.float32) * (rng.random((30, 50)) < 0.2)
    bsr, x = BSRMatrix.from_dense(w, (4, 4)), rng.standard_normal((50, 37)).astype(np.float32)
    out = {}
    for isa in usable:
        monkeypatch.setenv("MODELZIP_NATIVE", isa)
        out[isa] = xnor_gemm(pa, pb, 3000), bsr_matmul(bsr, x)
    np.testing.assert_array_equal(out["avx512"][0], out["avx2"][0])
    np.testing.assert_allclose(out["avx512"][1], out["avx2"][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("env", "flags", "isa", "reason"),
    [
        (None, AVX512_CPU, "avx512", None),
        ("1", AVX2_CPU, "avx2", None),  # AVX2 + FMA + POPCNT, no AVX-512: laptops, Zen 1-3
        (None, AVX2_CPU - {"fma"}, None, "the CPU lacks avx512f"),
        (None, frozenset(), None, "the CPU lacks avx512f"),  # ARM: no x86 flags at all
        ("avx2", AVX512_CPU, "avx2", None),  # forced: what an AVX2 CPU runs
        ("AVX2", AVX512_CPU, "avx2", None),
        ("avx2", AVX2_CPU - {"popcnt"}, None, "MODELZIP_NATIVE=avx2 but the CPU lacks popcnt"),
        ("avx512", AVX2_CPU, None, "MODELZIP_NATIVE=avx512 but the CPU lacks avx512f"),
        ("0", AVX512_CPU, None, "disabled by MODELZIP_NATIVE=0"),
        ("sse", AVX512_CPU, None, "MODELZIP_NATIVE=sse is not one of 0, 1, avx512, avx2"),
    ],
)
def test_dispatch_picks_the_best_build_the_cpu_runs(
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    flags: frozenset[str],
    isa: str | None,
    reason: str | None,
) -> None:
    if env is None:
        monkeypatch.delenv("MODELZIP_NATIVE", raising=False)
    else:
        monkeypatch.setenv("MODELZIP_NATIVE", env)
    monkeypatch.setattr(_native, "cpu_flags", lambda: flags)
    loaded: list[str] = []
    monkeypatch.setattr(_native, "_load", lambda name: loaded.append(name) or f"ext-{name}")
    assert _native.selected_isa() == isa
    got = _native.unavailable_reason()
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason)
    assert _native.native() == (None if isa is None else f"ext-{isa}")
    assert loaded == ([] if isa is None else [isa])  # nothing is built where nothing can run


def test_without_native_kernels_the_numba_kernels_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELZIP_NATIVE", "0")
    assert _native.native() is None
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 100)), rng.standard_normal((6, 100))
    np.testing.assert_array_equal(
        xnor_gemm(pack_signs(a), pack_signs(b), 100), np.sign(a) @ np.sign(b).T
    )
    w = rng.standard_normal((8, 8)).astype(np.float32)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    np.testing.assert_allclose(bsr_matmul(BSRMatrix.from_dense(w, (4, 4)), x), w @ x, rtol=1e-5)


@pytest.mark.parametrize("isa", list(_native.BUILDS))
def test_a_stale_build_lock_is_removed(tmp_path, monkeypatch: pytest.MonkeyPatch, isa: str) -> None:
    from torch.utils import cpp_extension

    monkeypatch.setenv("MODELZIP_CACHE", str(tmp_path))
    digest = _native.source_digest(isa)
    lock = tmp_path / "native" / digest / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    os.utime(lock, (0, 0))  # a build killed long ago
    seen: dict[str, Any] = {}

    def fake_load(**kw: Any) -> str:  # record what the build would meet, without compiling
        seen["lock"] = (tmp_path / "native" / digest / "lock").exists()
        seen.update(kw)
        return "ext"

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    _native._build.cache_clear()
    try:
        assert _native._build(isa) == "ext" and seen["lock"] is False
    finally:
        _native._build.cache_clear()
    assert seen["name"] == f"modelzip_{isa}_{digest}"  # each build its own cache entry
    assert all(flag in seen["extra_cflags"] for flag in _native.BUILDS[isa].cflags)


def test_the_builds_have_their_own_sources_and_flags() -> None:
    avx512, avx2 = _native.BUILDS["avx512"], _native.BUILDS["avx2"]
    assert _native.source_digest("avx512") != _native.source_digest("avx2")
    assert not any("512" in flag for flag in avx2.cflags)  # nothing AVX-512 in the AVX2 build
    assert set(avx512.needed) == set(_native.NEEDED_FLAGS)
    assert list(_native.BUILDS) == ["avx512", "avx2"]  # AVX-512 preferred where both run
