"""Compact CNN blocks: output shapes and parameter counts match their formulas; deformable and
dilated convolutions reduce to the plain convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelzip.compact import (
    BottleneckBlock,
    ChannelShuffle,
    DeformableConv2d,
    DenseBlock,
    DilatedConv2d,
    FireModule,
    InvertedResidual,
    SeparableBlock,
    ShuffleUnit,
    channel_shuffle,
)


def conv_weights(m: nn.Module) -> int:
    return sum(p.numel() for n, p in m.named_parameters() if p.dim() == 4)


def bn_params(m: nn.Module) -> int:
    return sum(p.numel() for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)
               for p in mod.parameters())  # fmt: skip


def test_dilation_one_is_plain_conv():
    torch.manual_seed(0)
    conv = DilatedConv2d(3, 5, 3, dilation=1)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_dilated_shape_and_params(dilation):
    conv = DilatedConv2d(4, 6, 3, dilation=dilation, bias=False)
    assert conv(torch.randn(1, 4, 12, 12)).shape == (1, 6, 12, 12)
    assert conv_weights(conv) == 6 * 4 * 9


@pytest.mark.parametrize("stride", [1, 2])
def test_deformable_zero_offsets_is_plain_conv(stride):
    torch.manual_seed(0)
    conv = DeformableConv2d(3, 4, 3, stride=stride, padding=1)
    x = torch.randn(2, 3, 8, 7)
    ref = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=1)
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)
    # Parameters: the kernel, its bias, and the offset conv (2 k^2 outputs).
    assert sum(p.numel() for p in conv.parameters()) == 4 * 27 + 4 + 18 * 27 + 18


def test_deformable_integer_offset_shifts_the_sample():
    torch.manual_seed(0)
    conv = DeformableConv2d(1, 1, 1, padding=0, bias=False)
    x = torch.randn(1, 1, 5, 5)
    offsets = torch.zeros(1, 2, 5, 5)
    offsets[:, 1] = 1.0  # dx = +1: each output reads the pixel to its right
    out = conv(x, offsets)
    want = torch.zeros_like(x)
    want[..., :-1] = x[..., 1:]
    torch.testing.assert_close(out, want * conv.weight.reshape(()), rtol=1e-5, atol=1e-6)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert torch.equal(ChannelShuffle(3)(channel_shuffle(x, 2)), x)


def test_separable_block_params():
    c, o, k = 8, 16, 3
    block = SeparableBlock(c, o, stride=2)
    assert block(torch.randn(2, c, 10, 10)).shape == (2, o, 5, 5)
    assert conv_weights(block) == c * k * k + c * o
    assert bn_params(block) == 2 * (c + o)


def test_inverted_residual_params_and_residual():
    c, t = 8, 4
    block = InvertedResidual(c, c, expansion=t)
    assert conv_weights(block) == t * c * c + t * c * 9 + t * c * c
    assert block.use_residual
    assert not InvertedResidual(c, 2 * c, stride=2).use_residual
    assert InvertedResidual(c, 2 * c, stride=2)(torch.randn(1, c, 8, 8)).shape == (1, 16, 4, 4)


def test_bottleneck_block_params():
    c, b = 16, 4
    block = BottleneckBlock(c, c, width=b)
    assert conv_weights(block) == c * b + b * b * 9 + b * c
    assert block(torch.randn(1, c, 6, 6)).shape == (1, c, 6, 6)


@pytest.mark.parametrize("stride", [1, 2])
def test_shuffle_unit(stride):
    c_in, c_out, g = 16, 16 if stride == 1 else 32, 2
    unit = ShuffleUnit(c_in, c_out, g, stride)
    mid = c_out // 4
    branch = c_out - c_in if stride == 2 else c_out
    assert unit(torch.randn(1, c_in, 8, 8)).shape == (1, c_out, 8 // stride, 8 // stride)
    assert conv_weights(unit) == c_in * mid // g + mid * 9 + mid * branch // g


def test_fire_and_dense_block():
    fire = FireModule(8, 2, 6)
    assert fire(torch.randn(1, 8, 5, 5)).shape == (1, 12, 5, 5)
    assert conv_weights(fire) == 8 * 2 + 2 * 6 + 2 * 6 * 9
    c, g, layers = 4, 3, 3
    dense = DenseBlock(c, g, layers)
    assert dense(torch.randn(1, c, 5, 5)).shape == (1, c + layers * g, 5, 5)
    assert conv_weights(dense) == sum((c + i * g) * g * 9 for i in range(layers))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        DilatedConv2d(1, 1, 2)
    with pytest.raises(ValueError, match="groups"):
        ShuffleUnit(15, 15, groups=2)
    with pytest.raises(ValueError, match="c_out == c_in"):
        ShuffleUnit(8, 16, 2, stride=1)
