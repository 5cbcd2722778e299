"""A small VGG-style CNN for 28 x 28 inputs (Simonyan & Zisserman, ICLR 2015, scaled down)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from modelzip.core.limits import check_positive_ints
from modelzip.models.common import MNIST_SHAPE, Normalize, check_shape
from modelzip.models.registry import register_model


@register_model(
    "vgg_small",
    "small VGG: conv 32,32 / pool / conv 64,64 / pool / conv 128 / global pool / fc 128-10, BN",
    MNIST_SHAPE,
    "mnist",
)
def vgg_small(
    input_shape: Sequence[int] = MNIST_SHAPE, num_classes: int = 10, width: int = 32
) -> nn.Sequential:
    """VGG-style stacks of 3x3 convolutions with BatchNorm.

    ``conv1``-``conv2`` (``width``), max-pool, ``conv3``-``conv4`` (2 ``width``), max-pool,
    ``conv5`` (4 ``width``), global average pool, ``fc1`` (4 ``width``), ReLU, ``fc2``. Each
    ``convN`` is followed by ``bnN`` and ``reluN``; the convolutions have no bias (BN has one).
    """
    c, _, _ = check_shape(input_shape, num_classes)
    check_positive_ints(width=width)
    channels = (width, width, 2 * width, 2 * width, 4 * width)
    layers: OrderedDict[str, nn.Module] = OrderedDict(normalize=Normalize())
    in_ch = c
    for i, out_ch in enumerate(channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(out_ch)
        layers[f"relu{i}"] = nn.ReLU()
        if i in (2, 4):
            layers[f"pool{i // 2}"] = nn.MaxPool2d(2)
        in_ch = out_ch
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(in_ch, in_ch)
    layers["relu6"] = nn.ReLU()
    layers["fc2"] = nn.Linear(in_ch, num_classes)
    return nn.Sequential(layers)
