"""Quantization-aware pruning: prune while training with fake-quantized weights.

The layers are masked layers (:class:`~modelzip.prune.masked.MaskedLinear` subclasses), so every
pruning schedule of :mod:`modelzip.prune.schedule` works on them unchanged — one-shot here,
gradual with :class:`~modelzip.prune.schedule.AGPCallback` during ``train`` — while the forward
pass uses the masked weight quantized to ``bits`` bits (symmetric levels ``Δ·k`` per output
channel, straight-through gradients as in ``qat``). The levels are fitted on the kept weights:
with symmetric min-max levels the pruned zeros change neither ``max|w|`` nor their own code, so
quantizing the masked weight *is* quantizing the kept weights, and pruned weights stay zero.

After training, ``sparse_quantize`` with the same ``bits`` stores the layer as a mask plus codes
of the kept weights, computing exactly what the fake-quantized layer computed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.module import conv2d, register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.prune.magnitude import magnitude_mask
from modelzip.prune.masked import MaskedConv2d, MaskedLinear, _Masked
from modelzip.quantize.fake import ste
from modelzip.quantize.quantizer import QuantizerConfig, quantize

__all__ = ["QuantAwareMaskedConv2d", "QuantAwareMaskedLinear", "QuantAwarePruneConfig"]


class _QuantAware:
    """Mixin of the fake-quantized masked layers (a ``_Masked`` with ``bits``, ``per_channel``)."""

    weight: nn.Parameter
    mask: torch.Tensor
    bits: int
    per_channel: bool

    def quantized_weight(self) -> torch.Tensor:
        """The masked weight on ``bits``-bit symmetric levels, straight-through to the weight."""
        w = self.weight * self.mask
        gran = "channel" if self.per_channel else "tensor"
        q = quantize(w.detach(), QuantizerConfig(bits=self.bits, granularity=gran))[1]
        return ste(w, q.to(w.dtype))

    def _quant_spec(self) -> dict[str, Any]:
        return {"bits": self.bits, "per_channel": self.per_channel}

    def _copy_masked(self, layer: Any) -> Any:
        """This (new) layer on ``layer``'s device and dtype with its weight, mask and bias."""
        new = self.to(device=layer.weight.device, dtype=layer.weight.dtype)  # type: ignore[attr-defined]
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            new.mask.copy_(layer.mask)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        return new


@register_layer
class QuantAwareMaskedLinear(_QuantAware, MaskedLinear):
    """``MaskedLinear`` whose forward pass uses its masked weight fake-quantized."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 4,
        per_channel: bool = True,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.bits, self.per_channel = bits, per_channel
        self.weight_bits = bits

    @classmethod
    def from_masked(
        cls, layer: MaskedLinear, bits: int, per_channel: bool
    ) -> QuantAwareMaskedLinear:
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, bits, per_channel)
        return new._copy_masked(layer)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), **self._quant_spec()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    def to_dense(self) -> nn.Linear:
        dense = super().to_dense()
        with torch.no_grad():
            dense.weight.copy_(self.quantized_weight())
        return dense


@register_layer
class QuantAwareMaskedConv2d(_QuantAware, MaskedConv2d):
    """``MaskedConv2d`` whose forward pass uses its masked weight fake-quantized."""

    def __init__(self, *args: Any, bits: int = 4, per_channel: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bits, self.per_channel = bits, per_channel
        self.weight_bits = bits

    @classmethod
    def from_masked(
        cls, layer: MaskedConv2d, bits: int, per_channel: bool
    ) -> QuantAwareMaskedConv2d:
        return cls(**layer.conv_args, bits=bits, per_channel=per_channel)._copy_masked(layer)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), **self._quant_spec()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_args
        w = self.quantized_weight().to(x.dtype)
        return conv2d(x, w, self.bias, a)

    def to_dense(self) -> nn.Conv2d:
        dense = super().to_dense()
        with torch.no_grad():
            dense.weight.copy_(self.quantized_weight())
        return dense


@dataclasses.dataclass(frozen=True)
class QuantAwarePruneConfig(MethodConfig):
    """Quantization-aware pruning: masked layers trained with fake-quantized weights.

    Prunes each selected layer to ``sparsity`` by magnitude now; fine-tune with
    ``compress(..., finetune=...)``, or prune gradually while training with
    :class:`~modelzip.prune.schedule.AGPCallback` (start from ``sparsity=0``). Then store it with
    ``sparse_quantize`` at the same ``bits``.

    Parameters
    ----------
    sparsity:
        Fraction of each layer's weights removed, in [0, 1).
    bits:
        Weight bits of the fake quantizer (symmetric levels), 2-16.
    per_channel:
        One scale per output channel (else per tensor).
    """

    method = "quant_aware_prune"
    sparsity: float = 0.5
    bits: int = 4
    per_channel: bool = True

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)
        check_range(self, "bits", 2, 16)


@register_method(
    QuantAwarePruneConfig, family="joint", example=QuantAwarePruneConfig(sparsity=0.5, bits=4)
)
def quant_aware_prune(module: nn.Module, config: QuantAwarePruneConfig, ctx: Context) -> nn.Module:
    """Magnitude pruning with fake-quantized weights in the forward pass (train to adapt)."""
    if isinstance(module, _QuantAware):
        layer = module
        if (layer.bits, layer.per_channel) != (config.bits, config.per_channel):
            raise SkipLayer(f"already fake-quantized to {layer.bits} bits")
    elif isinstance(module, _Masked) and type(module) in (MaskedLinear, MaskedConv2d):
        cls = QuantAwareMaskedLinear if isinstance(module, MaskedLinear) else QuantAwareMaskedConv2d
        layer = cls.from_masked(module, config.bits, config.per_channel)  # type: ignore[attr-defined]
    elif type(module) in (nn.Linear, nn.Conv2d):
        try:
            masked = (MaskedLinear if type(module) is nn.Linear else MaskedConv2d).from_dense(
                module
            )
        except ValueError as e:
            raise SkipLayer(str(e)) from None
        cls = QuantAwareMaskedLinear if type(module) is nn.Linear else QuantAwareMaskedConv2d
        layer = cls.from_masked(masked, config.bits, config.per_channel)  # type: ignore[attr-defined]
    else:
        raise SkipLayer(f"{type(module).__name__} has no quantization-aware masked form")
    # Already-pruned weights count as the smallest, so pruning again only adds to the mask.
    layer.set_mask(magnitude_mask(layer.masked_weight(), config.sparsity) & layer.mask)
    return layer
