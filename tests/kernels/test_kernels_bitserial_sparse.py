"""Bit-serial, sparse, int8 and factorized kernels against float64 references on odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelzip.kernels.bitserial import bitserial_gemm, code_range
from modelzip.kernels.factorized import (
    factorized_matmul,
    sweep_macs,
    tt_macs,
    tt_matmul,
    tt_sweep,
    tt_to_dense,
)
from modelzip.kernels.int8 import int8_matmul, linear_dynamic, prepack_linear
from modelzip.kernels.sparse import (
    BSRMatrix,
    CSRMatrix,
    bsr_matmul,
    choose_sparse,
    csr_matmul,
    detect_block,
)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (7, 13, 65), (5, 10, 131)])
def test_bitserial_exact(bits: int, signed: bool, m: int, n: int, k: int) -> None:
    rng = np.random.default_rng(bits * 100 + m)
    lo, hi = code_range(bits, signed)
    a, b = rng.integers(lo, hi + 1, (m, k)), rng.integers(lo, hi + 1, (n, k))
    np.testing.assert_array_equal(bitserial_gemm(a, b, bits, signed), a @ b.T)


def test_bitserial_range_checked() -> None:
    with pytest.raises(ValueError, match="outside"):
        bitserial_gemm(np.array([[4]]), np.array([[1]]), 2, False)


def block_sparse(rng: np.random.Generator, m: int, k: int, b: int, keep: float) -> np.ndarray:
    mask = rng.random((-(-m // b), -(-k // b))) < keep
    w = rng.standard_normal((m, k)).astype(np.float32)
    return w * np.kron(mask, np.ones((b, b)))[:m, :k].astype(np.float32)


@pytest.mark.parametrize("block", [2, 4, 3])
def test_bsr_matmul(block: int) -> None:
    rng = np.random.default_rng(block)
    w = block_sparse(rng, 37, 53, block, 0.3)
    bsr = BSRMatrix.from_dense(w, (block, block))
    np.testing.assert_array_equal(bsr.to_dense(), w)
    x = rng.standard_normal((53, 7)).astype(np.float32)
    ref = w.astype(np.float64) @ x
    np.testing.assert_allclose(bsr_matmul(bsr, x), ref, rtol=1e-5, atol=1e-4)
    assert detect_block(torch.from_numpy(w)) in (block, 2 * block, 1) or block == 3


def test_csr_matmul_and_choice() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((41, 29)) * (rng.random((41, 29)) < 0.1)).astype(np.float32)
    csr = CSRMatrix.from_dense(w)
    np.testing.assert_array_equal(csr.to_dense(), w)
    x = rng.standard_normal((29, 5)).astype(np.float32)
    np.testing.assert_allclose(csr_matmul(csr, x), w.astype(np.float64) @ x, rtol=1e-5, atol=1e-4)
    assert detect_block(torch.from_numpy(w)) == 1
    faster, ts, td = choose_sparse(csr, torch.from_numpy(w), 5, reps=2)
    assert isinstance(faster, bool) and ts > 0 and td > 0


def test_int8_kernels() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (7, 13), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (13, 5), dtype=torch.int8, generator=g)
    assert torch.equal(int8_matmul(a, b), (a.double() @ b.double()).int())
    codes = torch.randint(-127, 128, (5, 13), dtype=torch.int8, generator=g)
    scale = torch.rand(5, generator=g) + 0.1
    x = torch.randn(3, 7, 13, generator=g)
    y = linear_dynamic(x, prepack_linear(codes, scale, None))
    ref = x.double() @ (codes.double() * scale.double()[:, None]).T
    assert y.shape == (3, 7, 5)
    assert float((y - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_tt_matmul_and_macs() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(1, 3, 5, 2), (2, 4, 3, 3), (3, 2, 7, 1)]
    cores = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    w = tt_to_dense(cores)
    assert w.shape == (24, 105)
    x = torch.randn(9, 105, generator=g, dtype=torch.float64)
    torch.testing.assert_close(tt_matmul(x, cores), x @ w.T)
    torch.testing.assert_close(tt_sweep(x, cores), x @ w.T)
    assert sweep_macs(9, [tuple(c.shape) for c in cores]) >= tt_macs(9, cores)[0]
    planned, dense = tt_macs(9, cores)
    assert planned < dense
    eq = "bi,ij->bj"
    torch.testing.assert_close(factorized_matmul(eq, x, [w.T]), x @ w.T)
