"""Property-based tests (Hypothesis) of the foundation's methods over random shapes and values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from modelzip.prune.magnitude import magnitude_mask
from modelzip.prune.masked import pack_mask, unpack_mask
from modelzip.quantize.int8 import quantize_symmetric_int8

shapes = st.tuples(st.integers(1, 17), st.integers(1, 23))
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
special = st.sampled_from([0.0, -0.0, 1.4e-45, -1.4e-45, 1.2e-38, 3.4e38, -3.4e38, 1.0])
values = st.one_of(finite, special)


def _tensor(shape, elements=values):
    return arrays(np.float32, shape, elements=elements).map(torch.from_numpy)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=shapes, sparsity=st.floats(0.0, 0.999))
def test_magnitude_mask_exact_sparsity_and_keeps_largest(data, shape, sparsity):
    w = data.draw(_tensor(shape))
    mask = magnitude_mask(w, sparsity)
    n = w.numel()
    assert int((~mask).sum()) == round(sparsity * n)
    if mask.any() and (~mask).any():
        assert w[mask].abs().min() >= w[~mask].abs().max()


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=shapes)
def test_mask_bits_round_trip(data, shape):
    mask = data.draw(arrays(np.bool_, shape).map(torch.from_numpy))
    packed = pack_mask(mask)
    assert packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_mask(packed, shape), mask)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=shapes, per_channel=st.booleans())
def test_int8_error_bound_and_idempotence(data, shape, per_channel):
    w = data.draw(_tensor(shape, st.floats(-1e6, 1e6, allow_nan=False, width=32)))
    codes, scale = quantize_symmetric_int8(w, per_channel)
    assert codes.dtype == torch.int8 and codes.abs().max() <= 127
    view = (-1, 1) if per_channel else (1, 1)
    deq = codes.float() * scale.reshape(view)
    # nearest rounding: error at most half a step (float32 slack on the division)
    assert ((w - deq).abs() <= scale.reshape(view) * (0.5 + 1e-5) + 1e-30).all()
    codes2, scale2 = quantize_symmetric_int8(deq, per_channel)
    torch.testing.assert_close(codes2.float() * scale2.reshape(view), deq, rtol=1e-6, atol=0)


def test_int8_zero_and_single_element():
    codes, scale = quantize_symmetric_int8(torch.zeros(3, 4))
    assert torch.equal(codes, torch.zeros(3, 4, dtype=torch.int8)) and torch.equal(
        scale, torch.ones(3)
    )
    codes, scale = quantize_symmetric_int8(torch.tensor([[-2.5]]))
    assert codes.item() == -127
    assert scale.item() * 127 == pytest.approx(2.5, rel=1e-7)
