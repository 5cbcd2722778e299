"""Incremental network quantization (INQ, Zhou et al. ICLR 2017): power-of-two weights.

Weights take values in ``{0, ±2^n2, …, ±2^n1}`` with ``n1 = floor(log2(4·max|W|/3))`` and
``2^(b−1) − 1`` exponents below it. INQ does not quantize all weights at once: at each stage a
larger share of each layer (the largest magnitudes first; e.g. 50%, 75%, 87.5%, 100%) is
quantized and frozen, and the remaining float weights are retrained to compensate. Without
data (or with ``epochs_per_stage=0``) every weight is quantized in one step.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
from torch import nn

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.errors import ConfigError, ModelError
from modelzip.core.module import CompressedModule
from modelzip.core.registry import register_method
from modelzip.quantize.layers import quantized_layer
from modelzip.quantize.quantizer import QuantizerConfig, quantize, quantize_tensor

__all__ = ["INQConfig", "inq"]


@dataclasses.dataclass(frozen=True)
class INQConfig(MethodConfig):
    """Incremental power-of-two quantization.

    Parameters
    ----------
    bits:
        Bits per weight (one for the sign and zero, the rest index the exponents), 2-8.
    portions:
        Accumulated share of each layer's weights quantized after each stage, increasing, the
        last 1.
    epochs_per_stage:
        Retraining epochs after each stage but the last (needs ``data``); 0 quantizes at once.
    lr:
        Learning rate of the retraining (SGD, momentum 0.9).
    """

    method = "inq"
    bits: int = 5
    portions: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
    epochs_per_stage: int = 0
    lr: float = 0.01

    def validate(self) -> None:
        check_range(self, "bits", 2, 8)
        check_range(self, "epochs_per_stage", 0, 100)
        check_range(self, "lr", 0, low_open=True)
        p = self.portions
        if not p or any(b <= a for a, b in itertools.pairwise(p)) or p[-1] != 1.0 or p[0] <= 0:
            raise ConfigError(
                f"INQConfig.portions={list(p)} is not allowed; give increasing shares in (0, 1] "
                "ending with 1"
            )


def _levels_config(bits: int) -> QuantizerConfig:
    return QuantizerConfig(bits=bits, levels="log2", granularity="tensor")


class _Freezer:
    """Keeps the quantized share of each weight at its power-of-two value during retraining."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = layers
        self.masks: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def stage(self, share: float, bits: int) -> None:
        for name, layer in self.layers.items():
            w = layer.weight
            # The power-of-two grid is fixed by the layer's initial maximum (INQ's n1).
            q = self.values.get(name)
            if q is None:
                q = quantize(w.detach(), _levels_config(bits))[1]
                self.values[name] = q
            k = max(1, round(share * w.numel()))
            order = w.detach().abs().reshape(-1).argsort(descending=True)[:k]
            mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            mask[order] = True
            mask = mask.reshape(w.shape)
            if name in self.masks:
                mask |= self.masks[name]
            self.masks[name] = mask
            w.copy_(torch.where(mask, q, w))

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int, epoch: int) -> None:
        for name, layer in self.layers.items():
            layer.weight.copy_(torch.where(self.masks[name], self.values[name], layer.weight))


@register_method(INQConfig, family="quantize", example=INQConfig(), scope="model")
def inq(model: nn.Module, config: INQConfig, ctx: Context) -> None:
    """Incremental power-of-two weights (INQ), retraining the float share between stages."""
    selected = list(config.select.select(model, config.default_types))
    layers = {
        name: m
        for name, m in selected
        if type(m) in (nn.Linear, nn.Conv2d) and not isinstance(m, CompressedModule)
    }
    for name, m in selected:  # said, not passed by silently (a TT layer after `tt`)
        if isinstance(m, CompressedModule):
            ctx.skip(
                name,
                config.method,
                f"already compressed as {type(m).__name__}; inq applies to dense Linear and "
                "Conv2d layers (quantize_weights codes a decomposed layer's factors)",
            )
    for name in list(layers):  # dropped before retraining, which would change them too
        reason = ctx.refusal(name, None)  # a quantized layer keeps no dense weight
        if reason is not None:
            del layers[name]
            ctx.skip(name, config.method, reason)
    for name, layer in layers.items():
        if layer.weight.dtype != torch.float32:  # quantized layers compute in float32
            raise ModelError(
                f"inq: layer {name!r} has {layer.weight.dtype} weights; quantized layers compute "
                "in float32 (convert the model with .float() first)"
            )
    if config.epochs_per_stage and ctx.data is not None and len(config.portions) > 1:
        from modelzip.train import TrainConfig, train

        freezer = _Freezer(layers)
        for share in config.portions[:-1]:
            freezer.stage(share, config.bits)
            settings = TrainConfig(epochs=config.epochs_per_stage, lr=config.lr, val_size=0)
            train(model, ctx.data, settings, progress=False, callbacks=[freezer])
    for name, layer in layers.items():
        new = quantized_layer(
            layer, quantize_tensor(layer.weight.detach(), _levels_config(config.bits))
        )
        ctx.replace(name, new, method=config.method, note=f"{config.bits}-bit powers of two")
