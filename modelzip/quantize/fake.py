"""Quantization-aware training: fake-quantized layers with straight-through estimators.

The forward pass uses quantized weights (and, optionally, PACT-quantized inputs); the backward
pass treats the rounding as the identity (the straight-through estimator of Bengio et al. 2013,
as in BinaryConnect and DoReFa-Net), so the float "shadow" weights keep learning. TTQ's learned
positive and negative scales get their own gradients (Zhu et al. 2017):
``∂L/∂W_p = Σ_{w>Δ} ∂L/∂w_q``, ``∂L/∂W_n = −Σ_{w<−Δ} ∂L/∂w_q``, and the shadow weights receive
``W_p·g`` above the threshold, ``W_n·g`` below its negative and ``g`` between.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from modelzip.core.compressed import CompressedConv2d, CompressedLinear, WeightFormat
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.geometry import ConvGeometry
from modelzip.core.module import register_layer
from modelzip.core.registry import register_method
from modelzip.quantize.layers import plain_like, require_float32
from modelzip.quantize.observers import PACT
from modelzip.quantize.quantizer import QuantizerConfig, quantize
from modelzip.quantize.schemes import binarize, dorefa_weights, ternarize

__all__ = [
    "FakeQuantConv2d",
    "FakeQuantFormat",
    "FakeQuantLinear",
    "QATConfig",
    "fake_quantize_weight",
    "ste",
]

WeightScheme = Literal["none", "uniform", "dorefa", "binary", "ternary", "ttq"]


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` in the forward pass, the identity's gradient to ``x`` in the backward pass."""
    return q.detach() + (x - x.detach())  # exactly q: x − x.detach() is exactly zero


def _from_table(w: torch.Tensor, codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return torch.gather(levels, 1, codes.reshape(levels.shape[0], -1)).reshape(w.shape)


def fake_quantize_weight(
    w: torch.Tensor, scheme: str, bits: int = 4, per_channel: bool = True
) -> torch.Tensor:
    """Quantized ``w`` (float, same shape) under ``scheme``, with a straight-through gradient."""
    if scheme == "none":
        return w
    d = w.detach()
    if scheme == "uniform":
        gran = "channel" if per_channel else "tensor"
        q = quantize(d, QuantizerConfig(bits=bits, granularity=gran))[1]
    elif scheme == "dorefa":
        q = _from_table(d, *dorefa_weights(d, bits, per_channel))
    elif scheme == "binary":
        q = _from_table(d, *binarize(d, per_channel))
    elif scheme == "ternary":
        q = _from_table(d, *ternarize(d, per_channel))
    else:
        raise ValueError(f"unknown weight scheme {scheme!r}")
    return ste(w, q.to(w.dtype))


class _TTQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, wp, wn, delta):  # type: ignore[override]
        pos, neg = w > delta, w < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        return wp * pos - wn * neg

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        pos, neg, wp, wn = ctx.saved_tensors
        mid = ~(pos | neg)
        grad_w = g * (wp * pos + wn * neg + mid)
        return grad_w, (g * pos).sum().reshape(wp.shape), -(g * neg).sum().reshape(wn.shape), None


class FakeQuantFormat(WeightFormat):
    """Storage: the float ``weight`` trained through a straight-through quantizer (TTQ: also its
    learned scales ``wp``, ``wn``), and the PACT quantizer ``act`` of the inputs, if any."""

    # A training-time layer: its state is the float latent weight (deploy for packed codes).
    onnx_export = (
        "dense: a training-time fake-quantized layer holds float latent weights; "
        "export the deployed model for packed codes"
    )
    weight: nn.Parameter

    def _init_format(
        self,
        weight_shape: tuple[int, ...],
        scheme: str = "uniform",
        bits: int = 4,
        per_channel: bool = True,
        act_bits: int | None = None,
        act_clip: float = 6.0,
    ) -> None:
        self.weight_shape = tuple(weight_shape)
        self.scheme, self.bits, self.per_channel = scheme, bits, per_channel
        self.act_bits, self.act_clip = act_bits, act_clip
        self.weight_bits = {"none": 32, "binary": 1, "ternary": 2, "ttq": 2}.get(scheme, bits)
        self.weight = nn.Parameter(torch.zeros(weight_shape))
        self.act = PACT(act_bits, act_clip) if act_bits else None
        if scheme == "ttq":
            self.wp, self.wn = nn.Parameter(torch.ones(())), nn.Parameter(torch.ones(()))

    def format_spec(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "bits": self.bits, "per_channel": self.per_channel,
                "act_bits": self.act_bits, "act_clip": self.act_clip}  # fmt: skip

    @torch.no_grad()
    def _copy_from(self, dense: nn.Module) -> None:
        self.weight.copy_(dense.weight.float())
        if self.bias is not None:  # type: ignore[attr-defined]
            self.bias.copy_(dense.bias.float())  # type: ignore[attr-defined]
        if self.scheme == "ttq":
            _, levels = ternarize(dense.weight, per_channel=False, asymmetric=True)
            self.wn.fill_(float(-levels[0, 0]))
            self.wp.fill_(float(levels[0, 2]))

    def quantized_weight(self) -> torch.Tensor:
        if self.scheme == "ttq":
            delta = 0.7 * self.weight.detach().abs().mean()
            return _TTQFunction.apply(self.weight, self.wp, self.wn, delta)
        return fake_quantize_weight(self.weight, self.scheme, self.bits, self.per_channel)

    def decode_weight(self) -> torch.Tensor:
        return self.quantized_weight()

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act is None else self.act(x)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super().linear(self._input(x), bias)

    def conv2d(
        self, x: torch.Tensor, geometry: ConvGeometry, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return super().conv2d(self._input(x), geometry, bias)


@register_layer
class FakeQuantLinear(FakeQuantFormat, CompressedLinear):
    """``nn.Linear`` trained with quantized weights (and inputs) in the forward pass."""

    executable_forms = ("frozen_fake_quant", "bit_serial")


@register_layer
class FakeQuantConv2d(FakeQuantFormat, CompressedConv2d):
    """``nn.Conv2d`` trained with quantized weights (and inputs) in the forward pass."""

    executable_forms = ("frozen_fake_quant",)


@dataclasses.dataclass(frozen=True)
class QATConfig(MethodConfig):
    """Quantization-aware training: fake-quantized weights (and inputs) with straight-through
    gradients; train with ``compress(..., finetune=TrainConfig(...))``.

    Parameters
    ----------
    weights:
        ``uniform`` (k-bit symmetric), ``dorefa`` (DoReFa-Net's tanh normalization), ``binary``
        (``α·sign``), ``ternary`` (TWN), ``ttq`` (learned ``W_p``, ``W_n``) or ``none``.
    bits:
        Weight bits for ``uniform`` and ``dorefa``, 1-16.
    per_channel:
        Scales per output channel.
    act_bits:
        Quantize each layer's input to this many bits with PACT's learned clip (None: float).
        Inputs are clipped to ``[0, α]``, the range after a ReLU; use it on layers fed by ReLUs.
    act_clip:
        Initial PACT clip ``α``.
    """

    method = "qat"
    weights: WeightScheme = "uniform"
    bits: int = 4
    per_channel: bool = True
    act_bits: int | None = None
    act_clip: float = 6.0

    def validate(self) -> None:
        check_range(self, "bits", 1, 16)
        check_range(self, "act_bits", 1, 16)
        check_range(self, "act_clip", 0, low_open=True)


@register_method(QATConfig, family="quantize", example=QATConfig(), noop=QATConfig(weights="none"))
def qat(module: nn.Module, config: QATConfig, ctx: Context) -> nn.Module:
    """Fake-quantized weights and inputs with straight-through estimators, for fine-tuning."""
    layer = plain_like(
        module, FakeQuantLinear, FakeQuantConv2d, "qat", scheme=config.weights,
        bits=config.bits, per_channel=config.per_channel, act_bits=config.act_bits,
        act_clip=config.act_clip,
    )  # fmt: skip
    require_float32(module)
    layer._copy_from(module)
    return layer
