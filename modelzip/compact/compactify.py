"""Make a trained CNN compact: its standard convolutions replaced by compact equivalents.

Registers three methods of the ``compact`` family, each initialised from the trained kernel:

* ``depthwise_separable``: :class:`~modelzip.compact.layers.DepthwiseSeparableConv2d`
  (per-channel SVD; exact when ``depth_multiplier >= min(O, k^2)``);
* ``group_conv``: :class:`~modelzip.compact.layers.GroupConv2d` (the diagonal blocks);
* ``bottleneck_conv``: :class:`~modelzip.compact.layers.BottleneckConv2d` (truncated HOSVD).

Accuracy lost in the replacement is recovered by :func:`modelzip.compact.distill`.

>>> small, report = modelzip.compress(model, DepthwiseSeparableConfig(depth_multiplier=1))
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

from modelzip.compact.layers import BottleneckConv2d, DepthwiseSeparableConv2d, GroupConv2d
from modelzip.core.composition import RESTRUCTURES
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.registry import SkipLayer, register_method

__all__ = ["BottleneckConvConfig", "DepthwiseSeparableConfig", "GroupConvConfig"]


@dataclasses.dataclass(frozen=True)
class DepthwiseSeparableConfig(MethodConfig):
    """Replace ``k x k`` convolutions (``k > 1``) by depthwise-separable ones.

    Parameters
    ----------
    depth_multiplier:
        Depthwise filters per input channel, ``m``: the rank kept of each input channel's
        ``O x k^2`` kernel slice. Weights ``C m (k^2 + O)``; capped at ``min(O, k^2)`` (exact).
    """

    method: ClassVar[str] = "depthwise_separable"
    default_types: ClassVar[tuple[str, ...]] = ("Conv2d",)
    depth_multiplier: int = 1

    def validate(self) -> None:
        check_range(self, "depth_multiplier", 1)


@dataclasses.dataclass(frozen=True)
class GroupConvConfig(MethodConfig):
    """Replace convolutions by grouped ones keeping the diagonal blocks (``1/groups`` weights).

    Parameters
    ----------
    groups:
        Number of groups ``g``; layers whose channel counts ``g`` does not divide are skipped.
    """

    method: ClassVar[str] = "group_conv"
    default_types: ClassVar[tuple[str, ...]] = ("Conv2d",)
    groups: int = 2

    def validate(self) -> None:
        check_range(self, "groups", 1)


@dataclasses.dataclass(frozen=True)
class BottleneckConvConfig(MethodConfig):
    """Replace ``k x k`` convolutions by a 1x1 -> ``k x k`` -> 1x1 bottleneck (truncated HOSVD).

    Parameters
    ----------
    width_fraction:
        Bottleneck widths as a fraction of the input and output channels (``r_in = f C``,
        ``r_out = f O``, at least 1); ``1.0`` is exact.
    """

    method: ClassVar[str] = "bottleneck_conv"
    default_types: ClassVar[tuple[str, ...]] = ("Conv2d",)
    width_fraction: float = 0.5

    def validate(self) -> None:
        check_range(self, "width_fraction", 0.0, 1.0, low_open=True)


def _plain_conv(module: nn.Module) -> nn.Conv2d:
    if type(module) is not nn.Conv2d:
        raise SkipLayer(f"{type(module).__name__} is not a plain Conv2d")
    if module.groups != 1:
        raise SkipLayer(f"already grouped (groups={module.groups})")
    if module.padding_mode != "zeros":
        raise SkipLayer(f"padding_mode={module.padding_mode!r} (only 'zeros' is supported)")
    return module


@register_method(
    DepthwiseSeparableConfig,
    family="compact",
    example=DepthwiseSeparableConfig(depth_multiplier=1),
    noop=DepthwiseSeparableConfig(depth_multiplier=1_000_000),
    composition=RESTRUCTURES,
)
def depthwise_separable(module: nn.Module, config: DepthwiseSeparableConfig, ctx: Context):
    """Depthwise-separable replacement of a conv, from the per-channel SVD of its kernel."""
    conv = _plain_conv(module)
    if conv.kernel_size == (1, 1):
        raise SkipLayer("a 1x1 convolution is already pointwise")
    return DepthwiseSeparableConv2d.from_dense(conv, config)


@register_method(
    GroupConvConfig,
    family="compact",
    example=GroupConvConfig(groups=2),
    noop=GroupConvConfig(groups=1),
    composition=RESTRUCTURES,
)
def group_conv(module: nn.Module, config: GroupConvConfig, ctx: Context):
    """Grouped replacement of a conv keeping the diagonal blocks of its kernel."""
    conv = _plain_conv(module)
    g = config.groups
    if conv.in_channels % g or conv.out_channels % g:
        raise SkipLayer(
            f"groups={g} does not divide the channels ({conv.in_channels} -> {conv.out_channels})"
        )
    return GroupConv2d.from_dense(conv, config)


@register_method(
    BottleneckConvConfig,
    family="compact",
    example=BottleneckConvConfig(width_fraction=0.5),
    noop=BottleneckConvConfig(width_fraction=1.0),
    composition=RESTRUCTURES,
)
def bottleneck_conv(module: nn.Module, config: BottleneckConvConfig, ctx: Context):
    """1x1 -> kxk -> 1x1 bottleneck replacement of a conv, from the HOSVD of its kernel."""
    conv = _plain_conv(module)
    if conv.kernel_size == (1, 1):
        raise SkipLayer("a 1x1 convolution has no bottleneck form")
    return BottleneckConv2d.from_dense(conv, config)
