"""int8 products on PyTorch's own CPU kernels (no hand-written int8 GEMM: these win).

* :func:`int8_matmul`: ``torch._int_mm``, int8 × int8 → int32 (oneDNN, AVX-512 VNNI here).
  Without VNNI oneDNN's signed × signed product is not exact (pairs of products are added in a
  saturating int16, see :mod:`modelzip.kernels.isa`); there the product is computed in float,
  which is exact for these integers.
* :func:`prepack_linear` / :func:`linear_dynamic`: the x86/fbgemm dynamic-quantized linear
  (activations quantized per batch to 7 bits, PyTorch's ``reduce_range``, so that the uint8 ×
  int8 products cannot saturate on CPUs without VNNI; per-channel int8 weights prepacked once).
* :func:`prepack_conv2d` / :func:`conv2d_dynamic`: the same for convolutions.

Weights are symmetric int8 codes with per-output-channel scales (``W ≈ Δ_k·q``), the form of
:class:`modelzip.quantize.int8.Int8Linear`; see Jacob et al., CVPR 2018 for the integer scheme.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from modelzip.core.module import CompressedModule, register_layer
from modelzip.kernels import isa

#: Products of int8 codes are at most 2^14 in magnitude: float32 adds up to 2^10 of them exactly.
_FLOAT32_EXACT_K = 2**24 // 2**14


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``A·B`` (``int32``) of int8 matrices ``A`` (``M × K``) and ``B`` (``K × N``).

    ``torch._int_mm`` where int8 products cannot saturate; elsewhere (x86 without VNNI,
    :func:`modelzip.kernels.isa.int8_saturation`) a float GEMM, exact because every partial sum
    is an integer below 2^24 (float32, ``K ≤ 1024``) or 2^53 (float64). oneDNN's signed × signed
    path there shifts one operand to unsigned and adds pairs of products in a saturating int16;
    which operand it shifts depends on the shape, so no split of the operands is safe for all.
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_matmul takes int8 operands, got {a.dtype} and {b.dtype}")
    if a.device.type == "cpu" and isa.int8_saturation() is not None:
        dtype = torch.float32 if a.shape[1] <= _FLOAT32_EXACT_K else torch.float64
        return (a.to(dtype) @ b.to(dtype)).to(torch.int32)
    return torch._int_mm(a.contiguous(), b.contiguous())


def _quantized_weight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # quantized-tensor constructors warn of deprecation
        warnings.simplefilter("ignore")
        if scale.numel() == 1:
            return torch._make_per_tensor_quantized_tensor(codes.cpu(), float(scale), 0)
        zero = torch.zeros(codes.shape[0], dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(codes.cpu(), scale.double().cpu(), zero, 0)


def prepack_linear(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """fbgemm/x86 prepacked weight of an int8 linear layer (codes ``out × in``)."""
    b = bias.detach().float().cpu() if bias is not None else None
    return torch.ops.quantized.linear_prepack(_quantized_weight(codes, scale), b)


def linear_dynamic(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """``y = x·Wᵀ + b`` with ``x`` quantized per call to 8 bits (float in, float out)."""
    shape = x.shape
    y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).contiguous(), packed, True)
    return y.reshape(*shape[:-1], y.shape[-1])


def prepack_conv2d(
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> Any:
    """x86 prepacked weight of an int8 convolution (codes ``out × in/groups × kh × kw``)."""
    b = bias.detach().float().cpu() if bias is not None else None
    return torch.ops.quantized.conv2d_prepack(
        _quantized_weight(codes, scale), b, list(stride), list(padding), list(dilation), groups
    )


def conv2d_dynamic(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """Convolution with ``x`` quantized per call to 8 bits (float in, float out)."""
    return torch.ops.quantized.conv2d_dynamic(x.contiguous(), packed, True)


@register_layer
class Int8DynamicConv2d(CompressedModule):
    """An int8 convolution (codes ``q``, per-channel scales ``Δ``) run by the x86 engine's
    dynamic-quantized ``conv2d`` (input quantized per call). Built from
    :class:`modelzip.quantize.int8.Int8Conv2d` or any layer with ``codes``, ``scale``, ``bias``
    and ``conv_args``. Inference only."""

    stands_for = "Conv2d"
    weight_bits = 8

    def __init__(self, conv_args: dict[str, Any], per_channel: bool = True) -> None:
        super().__init__()
        self.conv_args = {k: tuple(v) if isinstance(v, list) else v for k, v in conv_args.items()}
        a = self.conv_args
        shape = (a["out_channels"], a["in_channels"] // a["groups"], *a["kernel_size"])
        self.register_buffer("codes", torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(shape[0] if per_channel else 1))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if a["bias"] else None
        self._packed: Any = None

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> Int8DynamicConv2d:
        if isinstance(dense.conv_args["padding"], str):
            raise ValueError("the int8 convolution kernel needs numeric padding")
        layer = cls(dict(dense.conv_args), dense.scale.numel() > 1)
        with torch.no_grad():
            layer.codes.copy_(dense.codes)
            layer.scale.copy_(dense.scale)
            if layer.bias is not None:
                layer.bias.copy_(dense.bias)
        return layer

    def spec(self) -> dict[str, Any]:
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in self.conv_args.items()}
        return {"conv_args": args, "per_channel": self.scale.numel() > 1}

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            a = self.conv_args
            self._packed = prepack_conv2d(self.codes, self.scale, self.bias, a["stride"],
                                          a["padding"], a["dilation"], a["groups"])  # fmt: skip
        with torch.no_grad():
            return conv2d_dynamic(x.float(), self._packed)

    def to_dense(self) -> nn.Conv2d:
        dense = nn.Conv2d(**self.conv_args)
        with torch.no_grad():
            dense.weight.copy_(self.codes.float() * self.scale.reshape(-1, 1, 1, 1))
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


__all__ = [
    "Int8DynamicConv2d",
    "conv2d_dynamic",
    "int8_matmul",
    "linear_dynamic",
    "prepack_conv2d",
    "prepack_linear",
]
