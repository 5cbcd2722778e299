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

from modelzip.core.compressed import CompressedConv2d, CompressedLinear
from modelzip.core.module import register_layer
from modelzip.kernels.int8 import QMAX, Int8Format, quantize_symmetric_int8

__all__ = ["QMAX", "Int8Conv2d", "Int8Format", "Int8Linear", "quantize_symmetric_int8"]


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
