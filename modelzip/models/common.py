"""Pieces shared by the zoo models."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from modelzip.core.limits import check_positive_ints

MNIST_SHAPE = (1, 28, 28)
#: MNIST's pixel mean and standard deviation (of the 60k training images scaled to [0, 1]).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Normalize(nn.Module):
    """``(x - mean) / std`` with constants, so the model takes raw ``[0, 1]`` images.

    The constants are plain attributes, not buffers: they are not learned, and keeping them out of
    the state dict lets weights trained elsewhere (without this layer) load unchanged.
    """

    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def check_shape(input_shape: Sequence[int], num_classes: int) -> tuple[int, int, int]:
    """``(C, H, W)`` from a list or tuple of three positive ints; ValueError on bad arguments."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
    check_positive_ints(num_classes=num_classes)
    return shape  # type: ignore[return-value]


def lenet_feature_pixels(
    name: str, input_shape: Sequence[int], num_classes: int
) -> tuple[int, int]:
    """``(C, pixels)``: the input channels, and the pixels per map after LeNet-5's features (two
    5x5 valid convs, each followed by a 2x2 max-pool; TWN's net has them too). ValueError on bad
    arguments or inputs smaller than 16 x 16."""
    c, h, w = check_shape(input_shape, num_classes)
    out_h, out_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    if min(out_h, out_w) < 1:
        raise ValueError(f"{name} needs inputs of at least 16 x 16 pixels, got {h} x {w}")
    return c, out_h * out_w
