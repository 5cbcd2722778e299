"""The ``int8`` method: which int8 layer a dense layer becomes, by activation policy.

Weights-only and dynamic activations give :class:`~modelzip.quantize.int8.Int8Linear` /
:class:`~modelzip.quantize.int8.Int8Conv2d`; calibrated static activations give the
:mod:`~modelzip.quantize.static_int8` layers.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from torch import nn

from modelzip.core.composition import QUANTIZES, Composition
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context, layer_name
from modelzip.core.embedding import is_embedding_view
from modelzip.core.errors import ConfigError
from modelzip.core.geometry import UnsupportedConv
from modelzip.core.module import CompressedModule
from modelzip.core.registry import SkipLayer, register_method
from modelzip.quantize.factors import holds_factors, quantize_factors
from modelzip.quantize.int8 import Int8Conv2d, Int8Linear
from modelzip.quantize.layers import require_float32
from modelzip.quantize.quantizer import QuantizerConfig, quantize_tensor
from modelzip.quantize.static_int8 import static_int8_layer


@dataclasses.dataclass(frozen=True)
class Int8Config(MethodConfig):
    """Symmetric int8 weight quantization.

    Parameters
    ----------
    per_channel:
        One scale per output channel (True) or one per tensor.
    activations:
        ``"dynamic"``: linear layers on the CPU quantize their input per batch and run PyTorch's
        int8 GEMM; ``"float"``: weights are dequantized and products are in float;
        ``"static"``: inputs and outputs of linear and conv layers are quantized to uint8 with
        ranges calibrated on ``calibration_size`` training inputs (or the sample batch), and
        products run on PyTorch's int8 CPU engine (per-channel weights).
    observer:
        Calibration range of the static activations: ``minmax``, ``percentile`` or ``mse``.
    percentile:
        Percentile of the ``percentile`` observer.
    calibration_size:
        Training inputs used for calibration.
    fold_bn:
        With static activations, fold each BatchNorm into the conv or linear layer before it
        first (the ``fold_bn`` step, checked on the sample), as int8 engines do: the calibrated
        ranges are then the normalized outputs and a deployed model runs no float BN between
        int8 layers.
    """

    method = "int8"
    default_types: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d", "Embedding")
    embeddings_as_tables: ClassVar[bool] = True
    per_channel: bool = True
    activations: Literal["float", "dynamic", "static"] = "dynamic"
    observer: Literal["minmax", "percentile", "mse"] = "minmax"
    percentile: float = 99.99
    calibration_size: int = 512
    fold_bn: bool = True

    def prerequisites(self) -> tuple[MethodConfig, ...]:
        if self.activations != "static" or not self.fold_bn:
            return ()
        from modelzip.quantize.fold import FoldBNConfig

        return (FoldBNConfig(),)

    def validate(self) -> None:
        check_range(self, "percentile", 50, 100, low_open=True)
        check_range(self, "calibration_size", 1)
        if self.activations == "static" and not self.per_channel:
            raise ConfigError(
                "Int8Config.per_channel=False is not allowed with activations='static' "
                "(the static path uses per-channel weights); allowed: True"
            )


_LAYERS = {nn.Linear: Int8Linear, nn.Conv2d: Int8Conv2d}


#: int8 stores every weight as a byte: a pruned layer's mask has no place in it, so int8 leaves
#: pruned layers alone (with the reason) and quantizes the others.
INT8 = Composition(
    takes={"dense", "parts"},
    passes={"kept"},  # [prune some layers, int8]: int8 quantizes the others
    gives="codes",
    why={
        **QUANTIZES.why,
        "kept": "int8 has no form that keeps a pruning mask (quantize_weights quantizes the "
        "kept weights and keeps the mask)",
    },
)


@register_method(Int8Config, family="quantize", example=Int8Config(), composition=INT8)
def int8(module: nn.Module, config: Int8Config, ctx: Context) -> nn.Module:
    """Symmetric per-channel int8 weights, one byte per weight."""
    if holds_factors(module):
        return _int8_factors(module, config, ctx)
    if isinstance(module, CompressedModule):
        raise SkipLayer(
            f"already compressed as {type(module).__name__}; int8 applies to dense layers "
            "(combinations of methods are the joint family's)"
        )
    cls = _LAYERS.get(type(module))
    if cls is None:
        raise SkipLayer(f"{type(module).__name__} has no int8 form")
    require_float32(module)
    if config.activations == "static" and is_embedding_view(module):
        raise SkipLayer(
            "an embedding's table meets no activations to calibrate; int8 with "
            "activations='static' applies to layers that compute (use 'dynamic' or 'float')"
        )
    try:
        if config.activations == "static":
            return static_int8_layer(module, config, ctx)
        return cls.from_dense(module, config)
    except UnsupportedConv as e:
        raise SkipLayer(str(e)) from None


def _int8_factors(module: nn.Module, config: Int8Config, ctx: Context) -> nn.Module:
    """A tensor-network layer's factors as symmetric 8-bit codes (``Δ = max|x|/127`` per first
    index of each factor, or per factor); its contraction runs in float on the decoded factors."""
    granularity = "channel" if config.per_channel else "tensor"
    codes = QuantizerConfig(bits=8, levels="uniform-symmetric", granularity=granularity)
    layer = quantize_factors(module, lambda f: quantize_tensor(f, codes))
    if config.activations != "float":
        ctx.note(
            layer_name(module, ctx),
            f"factors as 8-bit codes; activations={config.activations!r} does not apply: the "
            "factors' contraction runs in float on the decoded factors",
        )
    return layer
