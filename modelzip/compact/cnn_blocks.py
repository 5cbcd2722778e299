"""Compact convolution blocks (the survey's Figs. 5-6), as plain ``nn.Module`` building blocks.

Parameter counts (``C`` input and ``O`` output channels, ``k x k`` kernels, biases left out):

=====================================  =====================================================
block                                  weights
=====================================  =====================================================
dense conv                             ``O C k^2``
dilated conv (any dilation)            ``O C k^2`` (receptive field ``d(k-1)+1``, same cost)
deformable conv                        ``O C k^2 + 2k^2 C k^2`` (the offset conv)
group conv, ``g`` groups               ``O C k^2 / g``
depthwise-separable                    ``C k^2 + O C``
bottleneck, width ``b``                ``C b + b^2 k^2 + b O``
inverted residual, expansion ``t``     ``t C^2 + t C k^2 + t C O``
fire (squeeze ``s``, expand ``e``)     ``C s + s e + s e k^2``
dense block, growth ``g``, ``L``       ``sum_l (C + l g) g k^2``
=====================================  =====================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelzip.core.limits import check_positive_ints

__all__ = [
    "BottleneckBlock",
    "ChannelShuffle",
    "DeformableConv2d",
    "DenseBlock",
    "DilatedConv2d",
    "FireModule",
    "InvertedResidual",
    "ResidualBlock",
    "SeparableBlock",
    "ShuffleUnit",
    "channel_shuffle",
    "conv_bn_relu",
]


def conv_bn_relu(
    c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """``k x k`` conv (no bias, 'same' padding) -> BatchNorm -> ReLU (optional)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DilatedConv2d(nn.Conv2d):
    """Atrous convolution (Yu & Koltun, ICLR 2016) with 'same' padding ``d (k - 1) / 2``.

    A ``k x k`` kernel with dilation ``d`` sees a ``(d (k-1) + 1)^2`` window at the cost of
    ``k^2`` taps; dilation 1 is the plain convolution.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int = 3, dilation: int = 2, **kwargs
    ) -> None:
        check_positive_ints(kernel_size=kernel_size, dilation=dilation)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(c_in, c_out, kernel_size, padding=pad, dilation=dilation, **kwargs)


class DeformableConv2d(nn.Module):
    """Deformable convolution v1 (Dai et al., ICCV 2017), sampling with ``grid_sample``.

    .. math:: y(p_0) = \\sum_k w_k \\, x(p_0 + p_k + \\Delta p_k)

    where ``p_k`` runs over the kernel grid and the offsets ``Delta p_k`` (2 per tap) come from a
    plain conv over the input (``offset``, zero-initialised, so training starts from the plain
    conv). ``x`` at fractional positions is bilinear, zero outside the image.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_positive_ints(c_in=c_in, c_out=c_out, kernel_size=kernel_size, stride=stride)
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        taps = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.offset = nn.Conv2d(
            c_in, 2 * taps, kernel_size, stride, self.padding, dilation=dilation
        )
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: Tensor, offsets: Tensor | None = None) -> Tensor:
        """``offsets`` (``N x 2k^2 x H' x W'``, (dy, dx) per tap) default to ``self.offset(x)``."""
        n, c, h, w = x.shape
        k, s, d, p = self.kernel_size, self.stride, self.dilation, self.padding
        if offsets is None:
            offsets = self.offset(x)
        ho, wo = offsets.shape[-2:]
        dev, dt = x.device, x.dtype
        # Base sampling positions p0 + pk in input pixel coordinates: (taps, Ho, Wo).
        ky, kx = torch.meshgrid(
            torch.arange(k, device=dev, dtype=dt) * d,
            torch.arange(k, device=dev, dtype=dt) * d,
            indexing="ij",
        )
        oy = torch.arange(ho, device=dev, dtype=dt) * s - p
        ox = torch.arange(wo, device=dev, dtype=dt) * s - p
        base_y = ky.reshape(-1, 1, 1) + oy.reshape(1, -1, 1)
        base_x = kx.reshape(-1, 1, 1) + ox.reshape(1, 1, -1)
        off = offsets.reshape(n, k * k, 2, ho, wo)
        py = base_y + off[:, :, 0]
        px = base_x + off[:, :, 1]
        # align_corners=True maps pixel index i to -1 + 2 i / (size - 1).
        gy = 2 * py / max(h - 1, 1) - 1
        gx = 2 * px / max(w - 1, 1) - 1
        grid = torch.stack((gx, gy), dim=-1).reshape(n, k * k * ho, wo, 2)
        cols = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        cols = cols.reshape(n, c, k * k, ho, wo)
        out = torch.einsum("nckhw,ock->nohw", cols, self.weight.reshape(-1, c, k * k))
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle (Zhang et al., CVPR 2018): ``(g, C/g)`` -> ``(C/g, g)``."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`, so information crosses the groups."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        check_positive_ints(groups=groups)
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit: 1x1 group conv -> shuffle -> 3x3 depthwise -> 1x1 group conv.

    Stride 1 adds the input (``c_out == c_in``); stride 2 concatenates a 3x3 average-pooled input,
    so the convolutions produce ``c_out - c_in`` channels. The bottleneck is ``c_out / 4`` wide.
    """

    def __init__(self, c_in: int, c_out: int, groups: int = 2, stride: int = 1) -> None:
        super().__init__()
        check_positive_ints(c_in=c_in, c_out=c_out, groups=groups)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and c_in != c_out:
            raise ValueError(f"stride 1 needs c_out == c_in, got {c_in} -> {c_out}")
        branch = c_out - c_in if stride == 2 else c_out
        mid = max(groups, (c_out // 4) // groups * groups)
        if c_in % groups or branch % groups:
            raise ValueError(f"channels {c_in}, {branch} must be multiples of groups={groups}")
        self.stride = stride
        self.reduce = conv_bn_relu(c_in, mid, 1, groups=groups)
        self.shuffle = ChannelShuffle(groups)
        self.depthwise = conv_bn_relu(mid, mid, 3, stride, groups=mid, relu=False)
        self.expand = conv_bn_relu(mid, branch, 1, groups=groups, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(self.depthwise(self.shuffle(self.reduce(x))))
        if self.stride == 1:
            return F.relu(x + y)
        return F.relu(torch.cat((F.avg_pool2d(x, 3, 2, 1), y), dim=1))


class SeparableBlock(nn.Sequential):
    """MobileNet v1 block (Howard et al. 2017): 3x3 depthwise -> BN-ReLU -> 1x1 -> BN-ReLU.

    ``C k^2 + C O`` weights instead of ``C O k^2``, a ``1/O + 1/k^2`` fraction.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel_size: int = 3) -> None:
        check_positive_ints(c_in=c_in, c_out=c_out, stride=stride, kernel_size=kernel_size)
        super().__init__(
            conv_bn_relu(c_in, c_in, kernel_size, stride, groups=c_in),
            conv_bn_relu(c_in, c_out, 1),
        )


class InvertedResidual(nn.Module):
    """MobileNet v2 block (Sandler et al., CVPR 2018): expand 1x1 (``t C``) -> ReLU6 -> depthwise
    ``k x k`` -> ReLU6 -> linear project 1x1; the input is added when shapes allow."""

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, expansion: int = 4, kernel_size: int = 3
    ) -> None:
        super().__init__()
        check_positive_ints(c_in=c_in, c_out=c_out, stride=stride, expansion=expansion)
        mid = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(True)]
        layers += [
            nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(True),
            nn.Conv2d(mid, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.use_residual else y


class ResidualBlock(nn.Module):
    """``relu(body(x) + shortcut(x))`` (He et al., CVPR 2016); the shortcut is the identity, or a
    strided 1x1 conv + BN when the shape changes. ``body`` defaults to two 3x3 conv-BN."""

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, body: nn.Module | None = None
    ) -> None:
        super().__init__()
        check_positive_ints(c_in=c_in, c_out=c_out, stride=stride)
        self.body = body or nn.Sequential(
            conv_bn_relu(c_in, c_out, 3, stride), conv_bn_relu(c_out, c_out, 3, relu=False)
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_bn_relu(c_in, c_out, 1, stride, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class BottleneckBlock(ResidualBlock):
    """ResNet bottleneck: 1x1 reduce to ``width`` -> ``k x k`` -> 1x1 expand, plus the shortcut."""

    def __init__(self, c_in: int, c_out: int, width: int, stride: int = 1, kernel_size: int = 3):
        check_positive_ints(width=width, kernel_size=kernel_size)
        body = nn.Sequential(
            conv_bn_relu(c_in, width, 1),
            conv_bn_relu(width, width, kernel_size, stride),
            conv_bn_relu(width, c_out, 1, relu=False),
        )
        super().__init__(c_in, c_out, stride, body)


class FireModule(nn.Module):
    """SqueezeNet fire module (Iandola et al. 2016): squeeze 1x1 to ``s``, then 1x1 and 3x3
    expansions to ``e`` channels each, concatenated (``2e`` outputs)."""

    def __init__(self, c_in: int, squeeze: int, expand: int) -> None:
        super().__init__()
        check_positive_ints(c_in=c_in, squeeze=squeeze, expand=expand)
        self.squeeze = conv_bn_relu(c_in, squeeze, 1)
        self.expand1 = conv_bn_relu(squeeze, expand, 1)
        self.expand3 = conv_bn_relu(squeeze, expand, 3)

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze(x)
        return torch.cat((self.expand1(s), self.expand3(s)), dim=1)


class DenseBlock(nn.Module):
    """DenseNet block (Huang et al., CVPR 2017): layer ``l`` sees the concatenation of the input
    and all earlier outputs (``C + l g`` channels) and adds ``g`` (BN-ReLU-conv ``k x k``).

    Output channels: ``C + L g``.
    """

    def __init__(self, c_in: int, growth: int, layers: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_positive_ints(c_in=c_in, growth=growth, layers=layers)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(c_in + i * growth),
                nn.ReLU(),
                nn.Conv2d(c_in + i * growth, growth, kernel_size, 1, kernel_size // 2, bias=False),
            )
            for i in range(layers)
        )
        self.out_channels = c_in + layers * growth

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)
