"""Post-training weight quantization methods: k-bit quantizers and the named schemes.

Every method here replaces a ``Linear`` or ``Conv2d`` by a :class:`~modelzip.quantize.layers.
QuantLinear` / ``QuantConv2d`` holding bit-packed codes. Mixed precision is a recipe with several
steps whose selectors pick different layers (a layer quantized by an earlier step is skipped with
a reason by the later ones)::

    [QuantizeWeightsConfig(bits=8, select=Select(names=("fc2",))), QuantizeWeightsConfig(bits=2)]
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

import torch
from torch import nn

from modelzip.core.composition import QUANTIZES, Composition
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.registry import Knob, SkipLayer, register_method
from modelzip.quantize.factors import holds_factors, quantize_factors
from modelzip.quantize.layers import quantized_layer, require_float32
from modelzip.quantize.quantizer import (
    Quantized,
    QuantizerChoices,
    QuantizerConfig,
    quantize_tensor,
)
from modelzip.quantize.schemes import binarize, multibit_bases, ternarize
from modelzip.quantize.static_codes import record_ranges

__all__ = [
    "BinaryConfig",
    "MultibitConfig",
    "QuantizeWeightsConfig",
    "TernaryConfig",
    "table_quantized",
]


def table_quantized(
    weight: torch.Tensor, codes: torch.Tensor, levels: torch.Tensor, per_channel: bool
) -> Quantized:
    """Wrap the row codes and level table of a scheme as a :class:`Quantized` of ``weight``."""
    bits = max(1, math.ceil(math.log2(levels.shape[1])))
    granularity = "channel" if per_channel else "tensor"
    return Quantized(
        codes.reshape(weight.shape), bits, tuple(weight.shape), granularity, 0, levels=levels
    )


def _weight_of(module: nn.Module) -> torch.Tensor:
    if holds_factors(module):
        raise SkipLayer(
            f"{type(module).__name__} holds its weight as factor tensors, which this method's "
            "levels do not code (quantize_weights and int8 code a tensor-network layer's factors)"
        )
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise SkipLayer(f"{type(module).__name__} has no weight")
    require_float32(module)
    return weight.detach()


@dataclasses.dataclass(frozen=True)
class QuantizeWeightsConfig(QuantizerChoices, MethodConfig):
    """k-bit weight quantization with every quantizer choice as a field.

    See :class:`~modelzip.quantize.quantizer.QuantizerConfig` for ``bits``, ``levels``,
    ``formulation``, ``range``, ``percentile``, ``rounding``, ``granularity`` and ``group_size``.
    """

    method = "quantize_weights"
    default_types: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d", "Embedding")
    embeddings_as_tables: ClassVar[bool] = True
    bits: int = 4
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int = 64

    def quantizer(self) -> QuantizerConfig:
        return QuantizerConfig.of(self)

    def validate(self) -> None:
        self.quantizer()


#: Quantizes plain layers and a pruned layer's kept weights (``sparse_quantize`` keeps the mask).
KEPT_OR_DENSE = Composition(takes={"dense", "parts", "kept"}, gives="codes", why=QUANTIZES.why)
#: Sign levels ``±α`` have no zero: a pruned weight would come back.
NO_ZERO = Composition(
    takes={"dense", "parts"},
    passes={"kept"},
    gives="codes",
    why={
        **QUANTIZES.why,
        "kept": "its levels (±α) have no zero, so the pruned weights would come back",
    },
)


@register_method(
    QuantizeWeightsConfig,
    family="quantize",
    example=QuantizeWeightsConfig(bits=4),
    knob=Knob("bits", (2, 3, 4, 6, 8)),
    composition=KEPT_OR_DENSE,
)
def quantize_weights(module: nn.Module, config: QuantizeWeightsConfig, ctx: Context) -> nn.Module:
    """k-bit weights (uniform, power-of-two or k-means levels), bit-packed."""
    if holds_factors(module):  # a tensor-network layer: its factors are coded
        device = next(module.parameters()).device
        gen = ctx.generator(device) if config.rounding == "stochastic" else None
        return quantize_factors(module, lambda f: quantize_tensor(f, config.quantizer(), gen))
    weight = _weight_of(module)
    gen = ctx.generator(weight.device) if config.rounding == "stochastic" else None
    layer = quantized_layer(module, quantize_tensor(weight, config.quantizer(), gen))
    return record_ranges(layer, module, ctx)


@dataclasses.dataclass(frozen=True)
class BinaryConfig(MethodConfig):
    """Binary weights ``α·sign(W)``, ``α = mean|W|`` (BinaryConnect, BWN / XNOR-Net), one bit each.

    Parameters
    ----------
    per_channel:
        One ``α`` per output channel (XNOR-Net) or per tensor (BWN).
    stochastic:
        Draw ``+1`` with probability ``clip((1 + w/max|W|)/2, 0, 1)`` (BinaryConnect).
    """

    method = "binary"
    per_channel: bool = True
    stochastic: bool = False


@register_method(BinaryConfig, family="quantize", example=BinaryConfig(), composition=NO_ZERO)
def binary(module: nn.Module, config: BinaryConfig, ctx: Context) -> nn.Module:
    """Binary weights α·sign(W) with α = mean|W|, one bit per weight."""
    weight = _weight_of(module)
    gen = ctx.generator(weight.device) if config.stochastic else None
    codes, levels = binarize(weight, config.per_channel, config.stochastic, gen)
    layer = quantized_layer(module, table_quantized(weight, codes, levels, config.per_channel))
    return record_ranges(layer, module, ctx)


@dataclasses.dataclass(frozen=True)
class TernaryConfig(MethodConfig):
    """Ternary weights (TWN, Li & Liu 2016): ``Δ = threshold·E|W|``, ``α = mean_{|w|>Δ}|w|``.

    Parameters
    ----------
    threshold:
        TWN's factor (0.7 approximates the optimum for normal or uniform weights).
    per_channel:
        One ``Δ`` and ``α`` per output channel instead of per layer.
    asymmetric:
        Separate positive and negative scales (TTQ's ``W_p``, ``W_n`` at their closed-form
        start; training them is the ``qat`` method with ``weights="ttq"``).
    """

    method = "ternary"
    threshold: float = 0.7
    per_channel: bool = False
    asymmetric: bool = False

    def validate(self) -> None:
        check_range(self, "threshold", 0, 2, low_open=True)


@register_method(TernaryConfig, family="quantize", example=TernaryConfig(), composition=QUANTIZES)
def ternary(module: nn.Module, config: TernaryConfig, ctx: Context) -> nn.Module:
    """Ternary weights {−α, 0, +α} with TWN's threshold, two bits per weight."""
    weight = _weight_of(module)
    codes, levels = ternarize(weight, config.per_channel, config.threshold, config.asymmetric)
    layer = quantized_layer(module, table_quantized(weight, codes, levels, config.per_channel))
    return record_ranges(layer, module, ctx)


@dataclasses.dataclass(frozen=True)
class MultibitConfig(MethodConfig):
    """Weights as a sum of binary bases ``Σ_j α_j B_j`` (LQ-Nets, ABC-Net), fit by alternating
    least squares; ``num_bases`` bits per weight.

    Parameters
    ----------
    num_bases:
        ``M``, 1-8.
    per_channel:
        One ``α`` vector per output channel.
    iterations:
        Alternating least-squares rounds at most.
    """

    method = "multibit"
    num_bases: int = 2
    per_channel: bool = True
    iterations: int = 10

    def validate(self) -> None:
        check_range(self, "num_bases", 1, 8)
        check_range(self, "iterations", 0, 1000)


@register_method(MultibitConfig, family="quantize", example=MultibitConfig(), composition=NO_ZERO)
def multibit(module: nn.Module, config: MultibitConfig, ctx: Context) -> nn.Module:
    """Multi-bit binary bases Σ α_j B_j by alternating least squares (LQ-Nets / ABC-Net)."""
    weight = _weight_of(module)
    codes, levels, _ = multibit_bases(
        weight, config.num_bases, config.per_channel, config.iterations
    )
    return quantized_layer(module, table_quantized(weight, codes, levels, config.per_channel))
