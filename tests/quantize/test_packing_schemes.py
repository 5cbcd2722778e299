"""Bit-packing round trips and the closed forms of the named schemes."""

from __future__ import annotations

import itertools

import pytest
import torch

from modelzip.quantize.packing import pack_bits, packed_bytes, unpack_bits
from modelzip.quantize.schemes import (
    binarize,
    dorefa_weights,
    multibit_bases,
    stochastic_ternarize,
    ternarize,
)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8, 12, 16])
@pytest.mark.parametrize("n", [0, 1, 7, 9, 1001])
def test_packing_round_trip_and_size(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(n))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_bytes(n, bits)
    assert packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_packing_refuses_codes_out_of_range():
    with pytest.raises(ValueError, match="codes"):
        pack_bits(torch.tensor([4]), 2)


def test_binary_alpha_is_mean_abs_and_optimal():
    w = torch.randn(6, 30, generator=torch.Generator().manual_seed(0))
    codes, levels = binarize(w, per_channel=True)
    alpha = levels[:, 1]
    torch.testing.assert_close(alpha, w.abs().mean(dim=1))
    b = torch.where(w >= 0, 1.0, -1.0)
    err = ((w - alpha[:, None] * b) ** 2).sum(dim=1)
    for factor in (0.8, 0.95, 1.05, 1.2):
        assert (((w - factor * alpha[:, None] * b) ** 2).sum(dim=1) > err).all()
    assert torch.equal(codes, (w >= 0).long())


def test_stochastic_binary_probability():
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0]])
    g = torch.Generator().manual_seed(0)
    ups = sum(binarize(w, stochastic=True, generator=g)[0].float() for _ in range(4000)) / 4000
    torch.testing.assert_close(ups[0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), atol=0.04, rtol=0)


def test_twn_threshold_and_alpha_closed_form():
    w = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    codes, levels = ternarize(w.reshape(1, -1))
    delta = 0.7 * w.abs().mean()
    big = w.abs() > delta
    alpha = w.abs()[big].mean()
    torch.testing.assert_close(levels[0], torch.stack([-alpha, torch.tensor(0.0), alpha]))
    expected = torch.where(big, torch.sign(w), torch.zeros_like(w)) + 1
    assert torch.equal(codes.reshape(-1), expected.long())


def test_ttq_asymmetric_scales_are_side_means():
    w = torch.tensor([[-3.0, -1.0, 0.0, 0.1, 2.0, 4.0]])
    _, levels = ternarize(w, asymmetric=True)
    delta = 0.7 * w.abs().mean()
    assert float(levels[0, 2]) == pytest.approx(float(w[w > delta].mean()))
    assert float(levels[0, 0]) == pytest.approx(float(w[w < -delta].mean()))


def test_stochastic_ternary_unbiased():
    x = torch.tensor([0.3, -0.6, 1.2, 0.0])
    g = torch.Generator().manual_seed(2)
    total = torch.zeros(4)
    for _ in range(4000):
        t, s = stochastic_ternarize(x, g)
        total += t.float() * s
    torch.testing.assert_close(total / 4000, x, atol=0.06, rtol=0)


def test_multibit_error_decreases_with_bases():
    w = torch.randn(8, 200, generator=torch.Generator().manual_seed(3))
    errors = []
    for m in range(1, 5):
        codes, levels, alpha = multibit_bases(w, m)
        assert levels.shape == (8, 2**m) and alpha.shape == (8, m)
        errors.append(float(((w - torch.gather(levels, 1, codes)) ** 2).sum()))
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    # One basis is the binary optimum: alpha = mean|w|.
    _, levels, alpha = multibit_bases(w, 1)
    torch.testing.assert_close(alpha[:, 0], w.abs().mean(dim=1))


def test_dorefa_levels_follow_tanh_normalization():
    w = torch.randn(4, 50, generator=torch.Generator().manual_seed(4))
    codes, levels = dorefa_weights(w, bits=2, per_channel=False)
    t = torch.tanh(w)
    expected = torch.round((t / (2 * t.abs().max()) + 0.5) * 3)
    assert torch.equal(codes.reshape(w.shape), expected.long())
    grid = levels[0] / levels[0, -1]
    torch.testing.assert_close(grid, torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
