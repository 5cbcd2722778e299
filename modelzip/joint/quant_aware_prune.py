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
from torch import nn

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.geometry import UnsupportedConv
from modelzip.core.module import register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.prune.magnitude import magnitude_mask
from modelzip.prune.masked import MaskedConv2d, MaskedLinear, MaskFormat
from modelzip.quantize.fake import ste
from modelzip.quantize.quantizer import QuantizerConfig, quantize

__all__ = ["QuantAwareMaskedConv2d", "QuantAwareMaskedLinear", "QuantAwarePruneConfig"]


class QuantAwareFormat(MaskFormat):
    """A :class:`~modelzip.prune.masked.MaskFormat` whose decoded weight is the masked weight
    fake-quantized to ``bits`` bits (symmetric levels, straight-through gradients)."""

    def _init_format(
        self, weight_shape: tuple[int, ...], bits: int = 4, per_channel: bool = True
    ) -> None:
        super()._init_format(weight_shape)
        self.bits = self.weight_bits = bits
        self.per_channel = per_channel

    def format_spec(self) -> dict[str, Any]:
        return {"bits": self.bits, "per_channel": self.per_channel}

    def quantized_weight(self) -> torch.Tensor:
        """The masked weight on ``bits``-bit symmetric levels, straight-through to the weight."""
        w = self.masked_weight()
        gran = "channel" if self.per_channel else "tensor"
        q = quantize(w.detach(), QuantizerConfig(bits=self.bits, granularity=gran))[1]
        return ste(w, q.to(w.dtype))

    decode_weight = quantized_weight

    @classmethod
    def from_masked(cls, layer: MaskFormat, bits: int, per_channel: bool) -> Any:
        """``layer``'s weight, mask and bias (device and dtype too), fake-quantized."""
        new = cls.from_spec({**layer.spec(), "bits": bits, "per_channel": per_channel})  # type: ignore[attr-defined]
        new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
        new.load_state_dict(layer.state_dict())  # type: ignore[attr-defined]
        return new


@register_layer
class QuantAwareMaskedLinear(QuantAwareFormat, MaskedLinear):
    """``MaskedLinear`` whose forward pass uses its masked weight fake-quantized."""


@register_layer
class QuantAwareMaskedConv2d(QuantAwareFormat, MaskedConv2d):
    """``MaskedConv2d`` whose forward pass uses its masked weight fake-quantized."""


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
    if isinstance(module, QuantAwareFormat):
        layer = module
        if (layer.bits, layer.per_channel) != (config.bits, config.per_channel):
            raise SkipLayer(f"already fake-quantized to {layer.bits} bits")
    elif type(module) in (MaskedLinear, MaskedConv2d, nn.Linear, nn.Conv2d):
        linear = isinstance(module, (MaskedLinear, nn.Linear))
        cls = QuantAwareMaskedLinear if linear else QuantAwareMaskedConv2d
        try:
            masked = module if isinstance(module, MaskFormat) else cls.from_dense(module)
        except UnsupportedConv as e:
            raise SkipLayer(str(e)) from None
        layer = cls.from_masked(masked, config.bits, config.per_channel)
    else:
        raise SkipLayer(f"{type(module).__name__} has no quantization-aware masked form")
    # Already-pruned weights count as the smallest, so pruning again only adds to the mask.
    layer.set_mask(magnitude_mask(layer.masked_weight(), config.sparsity) & layer.mask)
    return layer
