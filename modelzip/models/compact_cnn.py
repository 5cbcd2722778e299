"""Compact CNNs for 28 x 28 inputs built from :mod:`modelzip.compact.cnn_blocks`.

MobileNet-, ShuffleNet- and SqueezeNet-like networks scaled to MNIST (tens of thousands of
parameters, against 431k for LeNet-5); ``width`` scales the channel counts. As in their ImageNet
forms the stem has stride 2, so the blocks work on 14 x 14 and smaller maps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from modelzip.compact.cnn_blocks import (
    FireModule,
    InvertedResidual,
    SeparableBlock,
    ShuffleUnit,
    conv_bn_relu,
)
from modelzip.core.limits import check_positive_ints
from modelzip.models.common import MNIST_SHAPE, Normalize, check_shape
from modelzip.models.registry import register_model


def _stem(
    input_shape: Sequence[int], num_classes: int, width: int, multiple: int = 1
) -> OrderedDict[str, nn.Module]:
    """The arguments checked, then input normalization and the 3x3 stride-2 stem conv to
    ``multiple * width`` channels."""
    c, _, _ = check_shape(input_shape, num_classes)
    check_positive_ints(width=width)
    return OrderedDict(normalize=Normalize(), stem=conv_bn_relu(c, multiple * width, 3, stride=2))


def _head(c: int, num_classes: int) -> OrderedDict[str, nn.Module]:
    return OrderedDict(
        avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(c, num_classes)
    )


@register_model(
    "mobilenet_mnist",
    "MobileNet-like: 3x3 stem, depthwise-separable block, 4 inverted residuals, global pool, fc",
    MNIST_SHAPE,
    "mnist",
)
def mobilenet_mnist(
    input_shape: Sequence[int] = MNIST_SHAPE, num_classes: int = 10, width: int = 12
) -> nn.Sequential:
    """Stem 3x3 conv (``w``, stride 2) -> separable block to ``2w`` -> inverted residuals
    (expansion 4) ``2w``, ``4w`` (stride 2), ``4w``, ``4w`` -> global average pool -> fc."""
    stem = _stem(input_shape, num_classes, width)  # first: the same weights for the same seed
    w = width
    blocks = OrderedDict(
        block1=SeparableBlock(w, 2 * w),
        block2=InvertedResidual(2 * w, 2 * w),
        block3=InvertedResidual(2 * w, 4 * w, stride=2),
        block4=InvertedResidual(4 * w, 4 * w),
        block5=InvertedResidual(4 * w, 4 * w),
    )
    return nn.Sequential(stem | blocks | _head(4 * w, num_classes))


@register_model(
    "shufflenet_mnist",
    "ShuffleNet-like: 3x3 stem, 4 shuffle units (group 1x1 convs + channel shuffle), fc",
    MNIST_SHAPE,
    "mnist",
)
def shufflenet_mnist(
    input_shape: Sequence[int] = MNIST_SHAPE,
    num_classes: int = 10,
    width: int = 48,
    groups: int = 2,
) -> nn.Sequential:
    """Stem 3x3 conv (``w``, stride 2) -> shuffle units ``2w`` (stride 2), ``2w``, ``4w``
    (stride 2), ``4w``, each with ``groups`` groups -> global average pool -> fc."""
    stem = _stem(input_shape, num_classes, width)  # first: the same weights for the same seed
    w = width
    units = OrderedDict(
        unit1=ShuffleUnit(w, 2 * w, groups, stride=2),
        unit2=ShuffleUnit(2 * w, 2 * w, groups),
        unit3=ShuffleUnit(2 * w, 4 * w, groups, stride=2),
        unit4=ShuffleUnit(4 * w, 4 * w, groups),
    )
    return nn.Sequential(stem | units | _head(4 * w, num_classes))


@register_model(
    "squeezenet_mnist",
    "SqueezeNet-like: 3x3 stem, fire modules with pooling, 1x1 conv classifier, global pool",
    MNIST_SHAPE,
    "mnist",
)
def squeezenet_mnist(
    input_shape: Sequence[int] = MNIST_SHAPE, num_classes: int = 10, width: int = 16
) -> nn.Sequential:
    """Stem 3x3 conv (``2w``, stride 2) -> fire(``w/2``, ``2w``) -> max-pool -> fire(``w``,
    ``3w``) -> max-pool -> fire(``w``, ``4w``) -> 1x1 conv to the classes -> global average
    pool."""
    stem = _stem(input_shape, num_classes, width, multiple=2)
    w = width
    s = max(1, w // 2)
    return nn.Sequential(
        stem
        | OrderedDict(
            fire1=FireModule(2 * w, s, 2 * w),
            pool1=nn.MaxPool2d(2),
            fire2=FireModule(4 * w, w, 3 * w),
            pool2=nn.MaxPool2d(2),
            fire3=FireModule(6 * w, w, 4 * w),
            classifier=nn.Conv2d(8 * w, num_classes, 1),
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
        )
    )
