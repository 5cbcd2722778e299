"""Symmetric int8 weight quantization, stored one byte per weight.

Per output channel ``k`` (or per tensor) the scale is ``Δ_k = max|W_k| / 127`` and the codes are
``q = clamp(round(W / Δ), -127, 127)`` (the symmetric range, so ``-q`` is always representable).
A zero channel gets ``Δ = 1`` and codes 0, so all-zero and constant weights are handled exactly.

The layers are the int8 storage, :class:`~modelzip.kernels.int8.Int8Format`, mixed into the
linear and conv ops of :mod:`modelzip.core.compressed`. Its activation policy decides the
product: ``"float"`` (the weight dequantized on the fly), ``"dynamic"`` (linear layers on the
CPU: PyTorch's int8 kernel with activations quantized per batch) or ``"static"`` (calibrated
activations, :mod:`modelzip.quantize.static_int8`).
"""

from __future__ import annotations

import torch
from torch import nn

from modelzip.core.compressed import CompressedConv2d, CompressedLinear
from modelzip.core.forms import Candidate, register_form
from modelzip.core.module import register_layer
from modelzip.kernels.int8 import QMAX, Int8Format, quantize_symmetric_int8
from modelzip.kernels.int8_gemv import gemv_candidates
from modelzip.kernels.int8_ort import ort_candidates

__all__ = [
    "QMAX",
    "Int8Conv2d",
    "Int8Format",
    "Int8Linear",
    "int8_grid",
    "quantize_symmetric_int8",
]


@register_layer
class Int8Linear(Int8Format, CompressedLinear):
    """``nn.Linear`` with int8 weight codes and float scales."""

    onnx_export = "converter:qdq_linear"
    executable_forms = ("int8_dynamic_linear",)


@register_layer
class Int8Conv2d(Int8Format, CompressedConv2d):
    """``nn.Conv2d`` with int8 weight codes and float scales."""

    onnx_export = "converter:qdq_conv2d"
    executable_forms = ("int8_dynamic_conv2d",)


def int8_grid(
    weight: torch.Tensor, step: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Int8 codes and per-row scales that give ``weight`` exactly, when its rows lie on grids of
    at most 255 levels through 0 (k-bit uniform codes, ternary ``{-α, 0, α}``, binary ``±α``);
    else None. The scale of a row is ``step`` (per row, when the caller knows it) or its
    smallest nonzero magnitude."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    mag = w.abs()
    tol = 1e-6 * float(mag.amax().clamp(min=1e-30))
    if step is None:
        # Affine-stored levels decode their zero as ``offset + scale·z``, a rounding residual,
        # not 0: magnitudes within the exactness tolerance are zeros, not the row's step.
        step = torch.where(mag > tol, mag, torch.inf).amin(dim=1)
    step = step.detach().float().reshape(-1)
    step = torch.where(torch.isfinite(step) & (step > 0), step, torch.ones_like(step))
    codes = torch.round(w / step[:, None])
    exact = (codes * step[:, None] - w).abs().amax() <= tol
    if not bool(exact) or float(codes.abs().amax()) > QMAX:
        return None
    return codes.to(torch.int8).reshape(weight.shape), step


@register_form("int8_codes")
def int8_codes(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A layer whose weights lie on a small per-row grid as int8 codes, computed once, for the
    x86 int8 kernels (activations quantized per batch): k-bit, ternary and binary weights
    through integer products instead of a float product on their decoded values."""
    from modelzip.kernels.int8 import Int8DynamicConv2d

    weight = module.decoded_weight()  # type: ignore[operator]
    conv = isinstance(module, CompressedConv2d)
    if weight.dim() not in (2, 4) or (conv and isinstance(module.geometry.padding, str)):
        return []
    grid = int8_grid(weight)
    if grid is None:
        return []

    def build() -> nn.Module:
        cls = Int8DynamicConv2d if conv else Int8Linear
        layer = cls.like(module.to_dense(), per_channel=True, activations="dynamic")  # type: ignore[attr-defined,operator]
        with torch.no_grad():
            layer.codes.copy_(grid[0])
            layer.scale.copy_(grid[1])
            if module.bias is not None:
                layer.bias.copy_(module.bias)
        return layer.eval()

    label = "x86 conv2d_dynamic" if conv else "x86 linear_dynamic"
    if conv:
        return [(f"int8:{label} (codes once)", build)]
    return [
        (f"int8:{label} (codes once)", build),
        *gemv_candidates("int8:native linear_dynamic (codes once)", build, measuring=x is not None),
        *ort_candidates("int8:onnxruntime linear_dynamic (codes once)", build),
    ]
