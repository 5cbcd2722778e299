"""Fake-quantized linear layers with k-bit inputs run bit-serially, with the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.kernels import materialize
from modelzip.kernels.bitserial_layers import BitSerialLinear, grid_codes
from modelzip.quantize.fake import FakeQuantLinear


def _fake(scheme: str, bits: int, act_bits: int | None, n: int = 77, m: int = 13) -> nn.Module:
    torch.manual_seed(0)
    dense = nn.Linear(n, m)
    layer = FakeQuantLinear(n, m, bias=True, scheme=scheme, bits=bits, per_channel=True,
                            act_bits=act_bits, act_clip=2.0)  # fmt: skip
    layer._copy_from(dense)
    return layer.eval()


@pytest.mark.parametrize(
    ("scheme", "bits", "act_bits"),
    [("uniform", 2, 2), ("uniform", 4, 4), ("dorefa", 3, 3), ("ternary", 2, 4), ("binary", 1, 2)],
)
def test_bitserial_layer_equals_the_fake_quantized_layer(scheme: str, bits: int, act_bits: int):
    layer = _fake(scheme, bits, act_bits)
    fast = BitSerialLinear.from_fake_quant(layer)
    x = torch.randn(5, 3, 77) * 1.5  # odd sizes, values beyond the clip and below 0
    with torch.no_grad():
        torch.testing.assert_close(fast(x), layer(x), rtol=1e-5, atol=1e-5)
    assert fast.act_bits == act_bits and fast.weight_bits <= max(bits, 2)
    torch.testing.assert_close(fast.to_dense().weight, layer.to_dense().weight, rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def test_grid_codes_reconstruct_and_refuse_off_grid_rows() -> None:
    w = torch.tensor([[-0.3, 0.1, 0.5, 0.1], [2.0, 2.0, 2.0, 2.0]])
    codes, offset, step, bits = grid_codes(w)
    torch.testing.assert_close(offset[:, None] + step[:, None] * codes.float(), w)
    assert bits == 2 and codes.min() >= 0
    assert grid_codes(torch.randn(3, 50)) is None  # float weights are on no small grid


def test_bitserial_layer_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="quantized inputs"):
        BitSerialLinear.from_fake_quant(_fake("uniform", 4, None))
    with pytest.raises(ValueError, match=r"weight_bits=9"):
        BitSerialLinear(4, 4, weight_bits=9, act_bits=2)
    fast = BitSerialLinear.from_fake_quant(_fake("uniform", 2, 2))
    with pytest.raises(RuntimeError, match="inference kernel"):
        fast(torch.randn(2, 77, requires_grad=True))


def test_materialize_offers_bitserial_for_fake_quantized_linears() -> None:
    model = nn.Sequential(_fake("uniform", 2, 2, 64, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(16, 64)
    new, report = materialize(model, x, reps=1, choose="compressed")
    assert isinstance(new[0], BitSerialLinear)
    assert report.layers[0].kernel == "bit-serial AND-popcount"
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-4, atol=1e-5)
    # Float inputs: no bit-serial form, but the weights are quantized once instead of per call.
    float_in = nn.Sequential(_fake("ttq", 2, None, 64, 32))
    frozen, report = materialize(float_in, x, reps=1, choose="compressed")
    assert isinstance(frozen[0], FakeQuantLinear) and frozen[0].scheme == "none"
    assert report.layers[0].kernel == "dense"
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), float_in(x))


def test_materialize_freezes_fake_quantized_convs() -> None:
    from modelzip.quantize.fake import FakeQuantConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    fake = FakeQuantConv2d({"in_channels": 3, "out_channels": 5, "kernel_size": (3, 3),
                            "stride": (1, 1), "padding": (1, 1), "dilation": (1, 1),
                            "groups": 1}, bias=True, scheme="dorefa", bits=3, per_channel=True,
                           act_bits=4, act_clip=2.0)  # fmt: skip
    fake._copy_from(conv)
    model = nn.Sequential(fake.eval())
    x = torch.randn(2, 3, 9, 9)
    new, report = materialize(model, x, reps=1, choose="compressed")
    assert isinstance(new[0], FakeQuantConv2d) and new[0].scheme == "none"
    assert report.layers[0].max_rel_error == 0.0  # the same float ops, weights quantized once
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x))
