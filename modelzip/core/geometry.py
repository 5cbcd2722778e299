"""The shape of a 2-D convolution, written once: :class:`ConvGeometry`.

Every conv-like compressed layer keeps one frozen geometry instead of its own dict of
``nn.Conv2d`` arguments, and writes it into its spec under one key, ``"conv"``. Files written
before this convention put the arguments under ``"conv_args"`` or ``"geometry"``, or flat in
the spec; :meth:`ConvGeometry.pop_from_spec` reads all four, so those files still load.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.errors import ModelzipError

Pair = tuple[int, int]
_FIELDS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")


class UnsupportedConv(ModelzipError):
    """A conv this library cannot hold in compressed form (the reason is the message)."""


def _pair(value: Any) -> Pair:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """``nn.Conv2d``'s shape arguments (pairs as tuples; ``padding`` may be ``"same"``/``"valid"``).

    Only zero padding is representable: circular, reflect and replicate padding are refused by
    :meth:`of` with the reason, in one place for every conv-like layer.
    """

    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pair | str = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        # Normalise what JSON gives (lists) and what torch accepts (ints) to one form, so that
        # two equal geometries compare equal whatever they were built from.
        for name in ("kernel_size", "stride", "dilation"):
            object.__setattr__(self, name, _pair(getattr(self, name)))
        if not isinstance(self.padding, str):
            object.__setattr__(self, "padding", _pair(self.padding))
        object.__setattr__(self, "in_channels", int(self.in_channels))
        object.__setattr__(self, "out_channels", int(self.out_channels))
        object.__setattr__(self, "groups", int(self.groups))

    @classmethod
    def of(cls, conv: nn.Module) -> ConvGeometry:
        """The geometry of ``conv`` (an ``nn.Conv2d`` or anything with its attributes)."""
        mode = getattr(conv, "padding_mode", "zeros")
        if mode != "zeros":
            raise UnsupportedConv(
                f"padding_mode {mode!r} is not supported; compressed convs pad with zeros"
            )
        return cls(*(getattr(conv, name) for name in _FIELDS))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvGeometry:
        """From a spec's dict (extra keys such as ``bias`` or ``padding_mode="zeros"`` ignored)."""
        mode = d.get("padding_mode", "zeros")
        if mode != "zeros":
            raise UnsupportedConv(f"padding_mode {mode!r} is not supported")
        return cls(**{name: d[name] for name in _FIELDS if name in d})

    @classmethod
    def pop_from_spec(cls, spec: dict[str, Any]) -> ConvGeometry:
        """Take the geometry out of a layer spec, in any of the layouts files have used."""
        for key in ("conv", "conv_args", "geometry"):
            if key in spec:
                return cls.from_dict(spec.pop(key))
        found = {name: spec.pop(name) for name in _FIELDS if name in spec}
        mode = spec.pop("padding_mode", "zeros")
        return cls.from_dict({**found, "padding_mode": mode})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (pairs as lists), the value of a spec's ``"conv"`` key."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (
            self.out_channels,
            self.in_channels // self.groups,
            self.kernel_size[0],
            self.kernel_size[1],
        )

    def conv(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``F.conv2d`` with this geometry."""
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def dense(self, bias: bool, **factory: Any) -> nn.Conv2d:
        """A fresh ``nn.Conv2d`` of this geometry (``factory``: ``device``, ``dtype``)."""
        args = {name: getattr(self, name) for name in _FIELDS}
        return nn.Conv2d(**args, bias=bias, **factory)

    def with_channels(self, in_channels: int, out_channels: int, groups: int = 1) -> ConvGeometry:
        """The same kernel, stride, padding and dilation between other channel counts (the
        pieces of a decomposed conv)."""
        return dataclasses.replace(
            self, in_channels=in_channels, out_channels=out_channels, groups=groups
        )
