"""Sub-byte weights as ONNX code tensors, so that the file keeps the bits the ``.mzip`` keeps.

A k-bit layer stores, per group of weights (a tensor, a channel or ``group_size`` weights of a
channel), its codes and either an affine map ``offset + scale·code`` or a level table. Both are
exported in the layout of :func:`~modelzip.quantize.quantizer.group_rows` (one row per group):

* an affine grid (uniform levels, and tables whose levels are evenly spaced: ternary, binary)
  becomes ``DequantizeLinear(codes, scale, zero_point, axis=0)``, plus an ``Add`` of the offset
  when it is not an integer number of steps (binary ``±α``, affine ranges);
* other tables (power-of-two, k-means, multi-bit bases, weight-sharing centroids) become
  ``GatherElements(levels, codes)``: the codes index their row's table (read through a
  ``DequantizeLinear`` of scale 1 and a ``Cast``, because ``Gather`` takes no 4-bit indices).

The traced graph holds the codes as uint8, marked by a ``modelzip_bits`` attribute on their
``DequantizeLinear``; :mod:`.subbyte` then stores them as ``UINT2``/``UINT4`` (opset 25/21).
Then the ungrouping (``Reshape``, a ``Slice`` of a padded last group) and the float
``Gemm``/``Conv``: onnxruntime folds the dequantized weight once, at session start.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.quantize.quantizer import group_rows

_INT64 = 7  # onnx.TensorProto.INT64
#: Widest codes exported as codes: DequantizeLinear reads 16-bit ones, but torch traces no uint16.
MAX_CODE_BITS = 8
#: How far (in steps) a level may sit from an even grid and still be exported as one.
_GRID_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class CodedWeight:
    """A weight as row codes plus per-row levels: an affine grid or a table."""

    codes: torch.Tensor  # (groups, n) int64 in [0, 2**bits)
    bits: int
    shape: tuple[int, ...]
    granularity: str
    scale: torch.Tensor | None = None  # (groups,): affine grid
    zero_point: torch.Tensor | None = None  # (groups,) int64, or None with an offset
    offset: torch.Tensor | None = None  # (groups,) float, when not a whole number of steps
    levels: torch.Tensor | None = None  # (groups, n_levels): a table

    def describe(self) -> str:
        if self.levels is not None:
            return f"{self.bits}-bit codes + {self.levels.shape[1]}-entry table (GatherElements)"
        extra = " + offset" if self.offset is not None else ""
        return f"{self.bits}-bit codes → DequantizeLinear{extra}"


def _even_grid(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(step, first)`` per row when every row of ``levels`` is ``first + step·k``, else None."""
    if levels.shape[1] < 2:
        return None
    first, step = levels[:, 0], levels[:, 1] - levels[:, 0]
    if not bool((step > 0).all()):
        return None
    grid = first[:, None] + step[:, None] * torch.arange(levels.shape[1], dtype=levels.dtype)
    if float(((levels - grid).abs() / step[:, None]).max()) > _GRID_TOLERANCE:
        return None
    return step, first


def affine_or_table(
    codes: torch.Tensor,
    bits: int,
    shape: tuple[int, ...],
    granularity: str,
    scale: torch.Tensor | None,
    offset: torch.Tensor | None,
    levels: torch.Tensor | None,
) -> CodedWeight:
    """The export form of row ``codes`` whose values are ``offset + scale·code`` or ``levels``."""
    if levels is not None:
        grid = _even_grid(levels.float())
        if grid is None:
            return CodedWeight(codes, bits, shape, granularity, levels=levels.float())
        scale, offset = grid
    assert scale is not None and offset is not None
    scale, offset = scale.float(), offset.float()
    zero = -offset / scale
    whole = torch.round(zero)
    if float((zero - whole).abs().max()) <= _GRID_TOLERANCE and bool(
        ((whole >= 0) & (whole < 2**bits)).all()
    ):
        return CodedWeight(codes, bits, shape, granularity, scale, zero_point=whole.long())
    return CodedWeight(codes, bits, shape, granularity, scale, offset=offset)


def with_zeros(coded: CodedWeight, kept: torch.Tensor) -> CodedWeight:
    """``coded`` with the weights where ``kept`` (rows) is False decoding to exactly zero.

    A grid or table that holds an exact zero gives the pruned weights its code (no extra bit);
    otherwise 0 is prepended to a table and the kept codes move up by one.
    """
    if coded.zero_point is not None:  # code == zero point decodes to exactly 0
        zero = coded.zero_point[:, None].expand_as(coded.codes)
        return dataclasses.replace(coded, codes=torch.where(kept, coded.codes, zero))
    if coded.levels is not None and bool((coded.levels == 0).any(dim=1).all()):
        zero = (coded.levels == 0).float().argmax(dim=1)[:, None].expand_as(coded.codes)
        return dataclasses.replace(coded, codes=torch.where(kept, coded.codes, zero))
    if coded.levels is not None:
        table = coded.levels
    else:
        assert coded.scale is not None and coded.offset is not None
        k = torch.arange(2**coded.bits, dtype=torch.float32)
        table = coded.offset[:, None] + coded.scale[:, None] * k
    table = torch.cat([torch.zeros(table.shape[0], 1), table], dim=1)
    codes = torch.where(kept, coded.codes + 1, torch.zeros_like(coded.codes))
    bits = max(1, math.ceil(math.log2(table.shape[1])))
    return CodedWeight(codes, bits, coded.shape, coded.granularity, levels=table)


def coded_rows(
    codes: torch.Tensor, shape: tuple[int, ...], granularity: str, group_size: int
) -> torch.Tensor:
    """Codes shaped like the weight, as the rows their levels belong to."""
    return group_rows(codes.reshape(shape), granularity, group_size).long()


class _AffineRows(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
    ) -> torch.Tensor:
        return (codes.float() - zero.float()[:, None]) * scale[:, None]

    @staticmethod
    def symbolic(g: Any, codes: Any, scale: Any, zero: Any, bits: int) -> Any:
        return g.op("DequantizeLinear", codes, scale, zero, axis_i=0, modelzip_bits_i=bits)


class _TableRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, codes: torch.Tensor, levels: torch.Tensor, bits: int) -> torch.Tensor:
        return torch.gather(levels, 1, codes.long())

    @staticmethod
    def symbolic(g: Any, codes: Any, levels: Any, bits: int) -> Any:
        one = g.op("Constant", value_t=torch.tensor(1.0))
        zero = g.op("Constant", value_t=torch.tensor(0, dtype=torch.uint8))
        index = g.op("DequantizeLinear", codes, one, zero, modelzip_bits_i=bits)
        return g.op("GatherElements", levels, g.op("Cast", index, to_i=_INT64), axis_i=1)


class CodedWeightModule(nn.Module):
    """Export form of a layer whose weight is a :class:`CodedWeight`: the weight is decoded by
    ONNX ops from the codes, then multiplied as the layer does (``linear`` or ``conv``)."""

    def __init__(self, coded: CodedWeight, bias: torch.Tensor | None, geometry: Any) -> None:
        super().__init__()
        self.bits, self.shape, self.granularity = coded.bits, coded.shape, coded.granularity
        self.geometry = geometry  # None: a linear layer
        # Rows of a tensor-wide group are padded to a whole group by repeating the last code.
        self.padded = coded.codes.numel() != math.prod(coded.shape)
        self.register_buffer("codes", coded.codes.to(torch.uint8))
        for name in ("scale", "offset", "levels"):
            value = getattr(coded, name)
            self.register_buffer(name, None if value is None else value.float().contiguous())
        zero = coded.zero_point
        self.register_buffer("zero_point", None if zero is None else zero.to(torch.uint8))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())

    def weight(self) -> torch.Tensor:
        if self.levels is not None:
            rows = _TableRows.apply(self.codes, self.levels, self.bits)
        else:
            zero = self.zero_point
            if zero is None:  # the offset carries the grid's origin
                zero = torch.zeros(self.codes.shape[0], dtype=torch.uint8)
            rows = _AffineRows.apply(self.codes, self.scale, zero, self.bits)
            if self.offset is not None:
                rows = rows + self.offset[:, None]
        numel = math.prod(self.shape)
        if self.granularity == "group":  # drop the padding of each channel's last group
            rows = rows.reshape(self.shape[0], -1)[:, : numel // self.shape[0]]
        elif self.granularity == "tensor" and self.padded:
            rows = rows.reshape(-1)[:numel]
        return rows.reshape(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.geometry is None:
            return F.linear(x, self.weight(), self.bias)
        return self.geometry.conv(x, self.weight(), self.bias)
