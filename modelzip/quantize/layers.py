"""Linear and convolution layers whose weights are stored as bit-packed codes plus levels.

One storage serves every weight quantizer of this family: ``bits``-bit codes packed densely
(:mod:`modelzip.quantize.packing`), and per group either an affine map ``offset + scale·code``
(uniform levels) or a table ``levels[group, code]`` (power-of-two, k-means, binary, ternary,
multi-bit bases). A 2-bit layer therefore saves a quarter of a byte per weight plus its levels.

The storage is one :class:`QuantFormat`, mixed into the linear and conv ops of
:mod:`modelzip.core.compressed`. Products are computed in float with the weight decoded on the
fly (and cached without autograd); bit-serial and packed-binary kernels are the kernels
family's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from modelzip.core.compressed import CompressedConv2d, CompressedLinear, WeightFormat
from modelzip.core.geometry import UnsupportedConv
from modelzip.core.module import CompressedModule, register_layer
from modelzip.core.registry import SkipLayer
from modelzip.quantize.packing import pack_bits, packed_bytes, unpack_bits
from modelzip.quantize.quantizer import Quantized, dequantize_codes, group_rows

__all__ = [
    "QuantConv2d",
    "QuantFormat",
    "QuantLinear",
    "plain_like",
    "quantized_layer",
    "require_float32",
]


class QuantFormat(WeightFormat):
    """Storage: ``bits``-bit packed codes and per-group levels (an affine map or a table)."""

    # The codes stay codes in the file: uint4/uint2 DequantizeLinear or a table (export/coded.py).
    onnx_export = "converter:coded_quant"
    # 1-bit codes run as BWN/XNOR, codes on an int8 grid through the int8 kernels, or the plain
    # float product of the decoded weight, whichever is measured fastest.
    # With calibrated activation ranges (:meth:`set_activation_ranges`), codes on an int8 grid
    # also run as a static int8 layer (:mod:`modelzip.quantize.static_codes`).
    executable_forms = ("dense", "binary", "int8_codes", "int8_static_codes")

    packed: torch.Tensor
    scale: torch.Tensor | None
    offset: torch.Tensor | None
    levels: torch.Tensor | None

    def _init_format(
        self,
        weight_shape: tuple[int, ...],
        bits: int,
        granularity: str = "channel",
        group_size: int = 64,
        n_levels: int = 0,
        calibrated: bool = False,
    ) -> None:
        self._init_codes(weight_shape, math.prod(weight_shape), bits, granularity, group_size,
                         n_levels)  # fmt: skip
        if calibrated:
            self.register_buffer("act_range", torch.zeros(4))

    def _init_codes(
        self,
        weight_shape: tuple[int, ...],
        n_codes: int,
        bits: int,
        granularity: str,
        group_size: int,
        n_levels: int,
    ) -> None:
        """Register ``packed`` (``n_codes`` codes of ``bits`` bits) and the per-group levels."""
        self.weight_shape = tuple(weight_shape)
        self.weight_bits = bits
        self.granularity, self.group_size, self.n_levels = granularity, group_size, n_levels
        groups = group_rows(torch.empty(weight_shape, device="meta"), granularity, group_size)
        n_groups = groups.shape[0]
        self.register_buffer("packed", torch.zeros(packed_bytes(n_codes, bits), dtype=torch.uint8))
        if n_levels:  # a level table
            self.register_buffer("levels", torch.zeros(n_groups, n_levels))
            self.scale = self.offset = None
        else:
            self.register_buffer("scale", torch.ones(n_groups))
            self.register_buffer("offset", torch.zeros(n_groups))
            self.levels = None

    def format_spec(self) -> dict[str, Any]:
        spec = {"bits": self.weight_bits, "granularity": self.granularity,
                "group_size": self.group_size, "n_levels": self.n_levels}  # fmt: skip
        # Only when set: an uncalibrated layer's spec (and older files) stay as they were.
        return {**spec, "calibrated": True} if "act_range" in self._buffers else spec  # type: ignore[attr-defined]

    @torch.no_grad()
    def set_activation_ranges(self, rin: tuple[float, float], rout: tuple[float, float]) -> None:
        """Record the calibrated ``(lo, hi)`` of the layer's input and output: a buffer, so that
        it is saved, and what a static int8 form of the layer needs besides the codes."""
        if "act_range" not in self._buffers:  # type: ignore[attr-defined]
            self.register_buffer("act_range", torch.zeros(4, device=self.packed.device))  # type: ignore[attr-defined]
        self.act_range.copy_(torch.tensor([*rin, *rout], dtype=torch.float32))

    def activation_ranges(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """The recorded input and output ranges, or None when the layer was not calibrated."""
        r = self._buffers.get("act_range")  # type: ignore[attr-defined]
        if r is None:
            return None
        lo_in, hi_in, lo_out, hi_out = (float(v) for v in r)
        return (lo_in, hi_in), (lo_out, hi_out)

    @torch.no_grad()
    def _store(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor | None,
        offset: torch.Tensor | None,
        levels: torch.Tensor | None,
    ) -> None:
        """Pack ``codes`` and copy the levels (a table, or ``scale`` and ``offset``)."""
        self.packed.copy_(pack_bits(codes, self.weight_bits))
        if self.levels is not None:
            assert levels is not None
            self.levels.copy_(levels)
        else:
            assert scale is not None and offset is not None
            self.scale.copy_(scale)
            self.offset.copy_(offset)

    def codes(self) -> torch.Tensor:
        """The unpacked codes, shaped like the weight."""
        numel = math.prod(self.weight_shape)
        return unpack_bits(self.packed, self.weight_bits, numel).reshape(self.weight_shape)

    def decode_weight(self) -> torch.Tensor:
        return dequantize_codes(
            self.codes(), self.weight_shape, self.granularity, self.group_size,
            self.scale, self.offset, self.levels,
        )  # fmt: skip

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.decoded_weight(dtype)  # type: ignore[attr-defined]


@register_layer
class QuantLinear(QuantFormat, CompressedLinear):
    """``nn.Linear`` with a ``bits``-bit packed weight."""


@register_layer
class QuantConv2d(QuantFormat, CompressedConv2d):
    """``nn.Conv2d`` with a ``bits``-bit packed weight."""


def require_float32(module: nn.Module) -> None:
    """Skip a layer whose weight is not float32: the quantized layers store float32 levels and
    compute in float32, so a float64 or bfloat16 model would get layers of another dtype than
    its inputs (found by tests/reliability: the forward pass then failed with a dtype error)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype != torch.float32:
        raise SkipLayer(
            f"weight dtype {weight.dtype} is not supported; quantized layers compute in "
            "float32 (convert the model with .float() first)"
        )


def plain_like(module: nn.Module, linear: type, conv: type, what: str, **format_spec: Any) -> Any:
    """An empty ``linear`` (for an ``nn.Linear``) or ``conv`` (for an ``nn.Conv2d``) layer of
    ``module``'s shape holding its bias; a compressed or other layer, or a conv no compressed op
    holds, is skipped with the reason. ``what`` names the method in the reasons."""
    if isinstance(module, CompressedModule):
        raise SkipLayer(
            f"already compressed as {type(module).__name__}; {what} applies to dense layers "
            "(combinations of methods are the joint family's)"
        )
    cls = {nn.Linear: linear, nn.Conv2d: conv}.get(type(module))  # exact types: no subclasses
    if cls is None:
        raise SkipLayer(f"{type(module).__name__} has no {what} form")
    try:
        layer = cls.like(module, **format_spec)
    except UnsupportedConv as e:
        raise SkipLayer(str(e)) from None
    if module.bias is not None:
        with torch.no_grad():
            layer.bias.copy_(module.bias.float())
    return layer


def quantized_layer(module: nn.Module, q: Quantized) -> QuantLinear | QuantConv2d:
    """The packed layer for dense ``module`` with its weight quantized as ``q``."""
    n_levels = 0 if q.levels is None else q.levels.shape[1]
    layer = plain_like(
        module, QuantLinear, QuantConv2d, "weight quantization", bits=q.bits,
        granularity=q.granularity, group_size=q.group_size, n_levels=n_levels,
    )  # fmt: skip
    layer._store(q.codes, q.scale, q.offset, q.levels)
    return layer
