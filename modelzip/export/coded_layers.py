"""Converters from the code-storing layer formats to :class:`~.coded.CodedWeightModule`.

``QuantFormat`` (``quantize_weights``, ``binary``, ``ternary``, ``multibit``; with a mask,
``sparse_quant``) and ``SharedFormat`` (``weight_sharing``) keep their codes in the file. A
layer whose codes are wider than :data:`~.coded.MAX_CODE_BITS` exports as its dense weight, and
the export result says so and why.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelzip.export.coded import (
    MAX_CODE_BITS,
    CodedWeight,
    CodedWeightModule,
    affine_or_table,
    coded_rows,
    with_zeros,
)
from modelzip.export.forms import mark


def _module(layer: Any, coded: CodedWeight) -> nn.Module:
    if coded.bits > MAX_CODE_BITS:
        why = f"{coded.bits}-bit codes are wider than the {MAX_CODE_BITS} bits traced as codes"
        return mark(layer.to_dense(), f"dense float: {why}")
    module = CodedWeightModule(coded, layer.bias, getattr(layer, "geometry", None))
    return mark(module, coded.describe())


def quant_format_coded(layer: Any) -> nn.Module:
    """Export form of a ``QuantFormat`` layer (and of its masked ``SparseQuantFormat``)."""
    shape, granularity = tuple(layer.weight_shape), layer.granularity
    rows = coded_rows(layer.codes(), shape, granularity, layer.group_size)
    coded = affine_or_table(
        rows, layer.weight_bits, shape, granularity, layer.scale, layer.offset, layer.levels
    )
    mask = getattr(layer, "mask", None)
    if isinstance(mask, torch.Tensor) and not bool(mask.all()):
        coded = with_zeros(coded, coded_rows(mask, shape, granularity, layer.group_size) > 0)
    return _module(layer, coded)


def shared_format_coded(layer: Any) -> nn.Module:
    """Export form of a ``SharedFormat`` layer: cluster indices into the centroid table."""
    shape = tuple(layer.weight_shape)
    rows = coded_rows(layer.codes, shape, "tensor", 0)
    levels = layer.centroids.detach().float()[None, :]
    coded = CodedWeight(rows, layer.weight_bits, shape, "tensor", levels=levels)
    if not bool(layer.mask.all()):
        coded = with_zeros(coded, coded_rows(layer.mask, shape, "tensor", 0) > 0)
    return _module(layer, coded)
