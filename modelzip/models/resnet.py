"""A small ResNet for 28 x 28 inputs (He et al., "Deep Residual Learning", CVPR 2016, CIFAR style).

A 3x3 stem of 16 channels, three stages of basic blocks with 16, 32 and 64 channels (stride 2 at
the start of the second and third), global average pooling and one linear layer. Names follow
torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.shortcut.0``, ``fc``) so recipes
read the same as for the big ResNets.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from modelzip.core.limits import check_positive_ints
from modelzip.models.common import MNIST_SHAPE, Normalize, check_shape
from modelzip.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (a 1x1 conv-BN projection where the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """See the module docstring; ``blocks`` basic blocks per stage."""

    def __init__(
        self, in_ch: int, num_classes: int, blocks: int, widths: tuple[int, int, int]
    ) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages = []
        prev = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(prev, width, stride)]
            stage += [BasicBlock(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            prev = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model(
    "resnet_small",
    "small ResNet: stem 16, stages of basic blocks 16/32/64 (stride 2), BN, avg pool, fc",
    MNIST_SHAPE,
    "mnist",
)
def resnet_small(
    input_shape: Sequence[int] = MNIST_SHAPE,
    num_classes: int = 10,
    blocks: int = 1,
    width: int = 16,
) -> ResNetSmall:
    """A CIFAR-style ResNet with ``blocks`` basic blocks per stage (1: ResNet-8, 2: ResNet-14)."""
    c, _, _ = check_shape(input_shape, num_classes)
    check_positive_ints(blocks=blocks, width=width)
    return ResNetSmall(c, num_classes, blocks, (width, 2 * width, 4 * width))
