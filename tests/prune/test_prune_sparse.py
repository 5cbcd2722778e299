"""Sparse storage formats round-trip with real byte counts; sparse execution matches dense."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modelzip.prune.grains import block_mask
from modelzip.prune.magnitude import magnitude_mask
from modelzip.prune.sparse_exec import SparseConv2d, SparseExecConfig, SparseLinear
from modelzip.prune.sparse_format import (
    decode_bitmask,
    decode_csr,
    decode_relative,
    encode_bitmask,
    encode_csr,
    encode_relative,
)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 70),
    density=st.floats(0.0, 1.0),
    bits=st.sampled_from([1, 3, 4, 5, 8]),
    seed=st.integers(0, 2**16),
)
def test_relative_index_round_trips(rows, cols, density, bits, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)).astype(
        np.float32
    )
    enc = encode_relative(w, bits)
    assert np.array_equal(decode_relative(enc), w)
    assert np.array_equal(decode_csr(encode_csr(w)), w)
    assert np.array_equal(decode_bitmask(encode_bitmask(w)), w)


def test_relative_index_pads_long_gaps_and_counts_bytes():
    w = np.zeros(100, dtype=np.float32)
    w[[0, 16, 17, 60]] = [1.0, 2.0, 3.0, 4.0]
    enc = encode_relative(w, 4)  # gaps of at most 15 zeros
    # 0 | 15 zeros, 16 | 17 | 42 zeros: padding at 33 and 49, then 60.
    assert enc.arrays["values"].tolist() == [1.0, 2.0, 3.0, 0.0, 0.0, 4.0]
    assert enc.nbytes == 3 + 6 * 4  # six 4-bit gaps in 3 bytes, six float32 values
    assert np.array_equal(decode_relative(enc), w)
    assert len(encode_relative(w, 5).arrays["values"]) == 5  # 31 zeros bridge more
    with pytest.raises(ValueError, match="bits=0"):
        encode_relative(w, 0)


def test_csr_and_bitmask_bytes():
    w = np.zeros((10, 40), dtype=np.float32)
    w[::2, ::5] = 1.0
    assert encode_csr(w).nbytes == 4 * 11 + 2 * 40 + 4 * 40
    assert encode_bitmask(w).nbytes == 50 + 4 * 40


def _pruned_linear(sparsity: float, blocks: bool = False) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        w = layer.weight
        mask = block_mask(w, sparsity, (4, 4)) if blocks else magnitude_mask(w, sparsity)
        w.mul_(mask)
    return layer


@pytest.mark.parametrize(
    ("sparsity", "blocks", "mode"),
    [(0.9, False, "csr"), (0.9, True, "bsr"), (0.3, False, "dense"), (0.0, False, "dense")],
)
def test_sparse_linear_matches_dense_and_chooses_its_kernel(sparsity, blocks, mode):
    dense = _pruned_linear(sparsity, blocks)
    layer = SparseLinear.from_dense(dense, SparseExecConfig(min_sparsity=0.75))
    assert layer.mode == mode
    x = torch.randn(5, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-5)
    assert layer.param_count() == int(torch.count_nonzero(dense.weight)) + 32
    rebuilt = SparseLinear.from_spec(layer.spec())
    rebuilt.load_packed_state(layer.packed_state())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), layer(x))


@pytest.mark.parametrize("mode", ["csr", "dense"])
def test_sparse_conv_matches_dense(mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.mul_(magnitude_mask(conv.weight, 0.8))
    layer = SparseConv2d.from_dense(conv, SparseExecConfig(mode=mode))
    x = torch.randn(2, 6, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.to_dense()(x), conv(x), rtol=1e-5, atol=1e-5)
