"""Int8 layers as ONNX integer and QDQ ops, so that the exported file stays int8 and runs in int8.

* Weights are int8 initializers read through ``DequantizeLinear`` (per output channel, axis 0):
  the file holds one byte per weight, as the ``.mzip`` does.
* ``activations="static"``: the input and output are ``QuantizeLinear``/``DequantizeLinear``
  pairs with the calibrated uint8 scale and zero point. onnxruntime's QDQ transformer fuses each
  ``DQ → Conv/Gemm → Q`` group into ``QLinearConv``/``QLinearMatMul``, i.e. int8 arithmetic.
* ``activations="dynamic"`` (linear layers): ``DynamicQuantizeLinear`` quantizes the input per
  batch, ``MatMulInteger`` multiplies uint8 by int8 into int32, and the product is rescaled by
  ``input_scale · weight_scale`` — the integer scheme of Jacob et al., CVPR 2018.

Where int8 products can saturate (x86 without VNNI, :mod:`modelzip.kernels.isa`), onnxruntime's
uint8 × int8 kernels add pairs of products into int16 as PyTorch's do, and its guide asks for a
reduced range. The file then follows the layer on this machine: a static input is quantized on
the layer's 7-bit grid (``QuantizeLinear`` then a ``Clip`` of the codes to 127, PyTorch's export of
a ``0..127`` fake quantization), and a dynamic input on 7 bits computed from its own range
(``ReduceMin``/``ReduceMax``, ``QuantizeLinear``, ``Clip``) as PyTorch's dynamic linear does,
instead of ``DynamicQuantizeLinear``'s 8 bits. The grid is the exporting machine's: a file for a
machine without VNNI is made there, or with ``MODELZIP_INT8_REDUCE_RANGE=1``.

The ops are emitted by ``symbolic`` methods of autograd Functions (the TorchScript exporter's
documented hook for custom ONNX ops); their ``forward`` computes the same thing in float so the
traced shapes and the eager check agree.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import modelzip.kernels.isa as isa
from modelzip.export.forms import mark

_FLOAT = 1  # onnx.TensorProto.FLOAT
_UINT8 = 2  # onnx.TensorProto.UINT8
#: Top code of a reduced-range (7-bit) uint8 activation.
_QMAX_REDUCED = 127


class _DequantizeWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        view = (-1,) + (1,) * (codes.dim() - 1)
        return codes.float() * scale.float().reshape(view)

    @staticmethod
    def symbolic(g: Any, codes: Any, scale: Any) -> Any:
        zero = g.op("Constant", value_t=torch.zeros(_len(scale), dtype=torch.int8))
        return g.op("DequantizeLinear", codes, scale, zero, axis_i=0)


def _len(value: Any) -> int:
    sizes = value.type().sizes()
    return int(sizes[0]) if sizes else 1


def dequantized_weight(layer: Any) -> torch.Tensor:
    """``layer.codes`` through a per-axis ``DequantizeLinear`` (a per-tensor scale is widened)."""
    scale = layer.scale.float()
    if scale.numel() != layer.codes.shape[0]:
        scale = scale.reshape(-1)[:1].expand(layer.codes.shape[0]).contiguous()
    return _DequantizeWeight.apply(layer.codes, scale)


class _DynamicInt8Linear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, codes_t: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        # Float stand-in for tracing only (the exported graph is the symbolic below); reading the
        # input's range here would put data-dependent constants into the traced graph.
        return x @ (codes_t.float() * scale.float()) + bias

    @staticmethod
    def symbolic(g: Any, x: Any, codes_t: Any, scale: Any, bias: Any) -> Any:
        xq, x_scale, x_zero = g.op("DynamicQuantizeLinear", x, outputs=3)
        acc = g.op("MatMulInteger", xq, codes_t, x_zero)
        y = g.op("Mul", g.op("Cast", acc, to_i=_FLOAT), g.op("Mul", x_scale, scale))
        return g.op("Add", y, bias)


class _DynamicInt8LinearReduced(_DynamicInt8Linear):
    """The dynamic linear with the input on 7 bits (codes 0..127), from its own range."""

    @staticmethod
    def symbolic(g: Any, x: Any, codes_t: Any, scale: Any, bias: Any) -> Any:
        def const(value: float | int, dtype: torch.dtype = torch.float32) -> Any:
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        lo = g.op("Min", g.op("ReduceMin", x, keepdims_i=0), const(0.0))
        hi = g.op("Max", g.op("ReduceMax", x, keepdims_i=0), const(0.0))
        # An all-zero input has no range: any positive scale quantizes it to the zero point.
        x_scale = g.op("Max", g.op("Div", g.op("Sub", hi, lo), const(float(_QMAX_REDUCED))),
                       const(1e-30))  # fmt: skip
        x_zero = g.op("Cast", g.op("Round", g.op("Div", g.op("Neg", lo), x_scale)), to_i=_UINT8)
        xq = g.op("QuantizeLinear", x, x_scale, x_zero)
        xq = g.op("Clip", xq, const(0, torch.uint8), const(_QMAX_REDUCED, torch.uint8))
        acc = g.op("MatMulInteger", xq, codes_t, x_zero)
        y = g.op("Mul", g.op("Cast", acc, to_i=_FLOAT), g.op("Mul", x_scale, scale))
        return g.op("Add", y, bias)


def _fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int = 255
) -> torch.Tensor:
    # Exported by torch as QuantizeLinear + DequantizeLinear with a uint8 zero point, and a Clip
    # of the codes between them when qmax is 127.
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), 0, qmax)


def _fake_quant_input(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """The static layer's input quantization on this machine's grid (8 or 7 bits)."""
    return _fake_quant(x, *layer.input_qparams())


class QDQLinear(nn.Module):
    """Export form of :class:`~modelzip.quantize.int8.Int8Linear` (and its static variant)."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layer = layer
        self.activations = getattr(layer, "activations", "float")
        mark(self, f"int8 codes → DequantizeLinear ({self.activations} activations)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if self.activations == "dynamic":
            bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
            codes_t = layer.codes.t().contiguous()
            reduced = isa.reduced_int8_range()
            function = _DynamicInt8LinearReduced if reduced else _DynamicInt8Linear
            return function.apply(x, codes_t, layer.scale, bias)
        if self.activations == "static":
            x = _fake_quant_input(layer, x)
        y = F.linear(x, dequantized_weight(layer), layer.bias)
        if self.activations == "static":
            y = _fake_quant(y, layer.out_scale, layer.out_zero)
        return y


class QDQConv2d(nn.Module):
    """Export form of :class:`~modelzip.quantize.int8.Int8Conv2d` (and its static variant)."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layer = layer
        self.static = getattr(layer, "activations", "float") == "static"
        mark(self, f"int8 codes → DequantizeLinear ({getattr(layer, 'activations', 'float')} "
                   "activations)")  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if self.static:
            x = _fake_quant_input(layer, x)
        w = dequantized_weight(layer)
        y = layer.geometry.conv(x, w, layer.bias)
        if self.static:
            y = _fake_quant(y, layer.out_scale, layer.out_zero)
        return y
