"""k-bit, ternary and binary weights on the static int8 engine, with their weights unchanged.

A weight whose rows lie on a grid of at most 255 levels through 0 (uniform symmetric codes,
ternary ``{-α, 0, α}``, binary ``±α``) is exactly ``codes × scale`` with int8 codes
(:func:`~modelzip.quantize.int8.int8_grid`), so the layer can run as a
:class:`~modelzip.quantize.static_int8.StaticInt8Conv2d` / ``StaticInt8Linear`` (and join the
uint8 chain, :mod:`modelzip.quantize.int8_chain`): only its activations are quantized, to 8
bits, on ranges calibrated while the weights were quantized (:func:`record_ranges`).

A layer without recorded ranges (no sample during compress, an older file), or whose decoded
weight is on no int8 grid (k-means levels, power-of-two levels beyond 127 steps), offers no such
form and keeps the others.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelzip.core.compressed import CompressedConv2d
from modelzip.core.context import Context
from modelzip.core.forms import Candidate, register_form
from modelzip.quantize.int8 import int8_grid
from modelzip.quantize.observers import Observer
from modelzip.quantize.static_int8 import StaticInt8Conv2d, StaticInt8Linear

__all__ = ["int8_static_codes", "record_ranges", "static_int8_refusal"]


@torch.no_grad()
def record_ranges(layer: nn.Module, module: nn.Module, ctx: Context) -> nn.Module:
    """``layer`` (the quantized ``module``) with the min/max of ``module``'s input and of
    ``layer``'s output on it (coarse weights move the output range: a ternary layer's is not
    the dense one's) while ``ctx.model`` runs on the sample; as it is when there is no sample,
    ``module`` is not a plain linear or conv layer, or the model does not call it."""
    if ctx.sample is None or type(module) not in (nn.Linear, nn.Conv2d):
        return layer
    seen_in, seen_out = Observer("minmax"), Observer("minmax")
    calls = []

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        calls.append(1)
        seen_in.observe(args[0])
        seen_out.observe(layer.to(args[0].device)(args[0]))

    model = ctx.model if ctx.model is not None else module
    handle = module.register_forward_pre_hook(hook)
    was_training = model.training
    try:
        model.eval()
        model(ctx.sample)
    finally:
        handle.remove()
        model.train(was_training)
    if not calls:  # the model never called it (a parent reads its weight; an embedding's table)
        return layer
    layer.set_activation_ranges(seen_in.range(), seen_out.range())  # type: ignore[operator]
    return layer


def _row_steps(module: nn.Module) -> torch.Tensor | None:
    """The grid step of each output row of an affine-stored weight (one scale per row or per
    tensor): a row's smallest magnitude may be several steps (a 3×3 filter on 16 levels)."""
    scale = getattr(module, "scale", None)
    granularity = getattr(module, "granularity", "")
    if getattr(module, "levels", None) is not None or scale is None:
        return None
    rows = module.weight_shape[0]  # type: ignore[union-attr]
    if granularity == "tensor":
        return scale.reshape(1).expand(rows)
    return scale if granularity == "channel" and scale.numel() == rows else None


def _grid(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    return int8_grid(module.decoded_weight(), _row_steps(module))  # type: ignore[operator]


def static_int8_refusal(module: nn.Module) -> str | None:
    """Why ``module`` has no static int8 form, or None when it has one."""
    ranges = getattr(module, "activation_ranges", lambda: None)()
    if ranges is None:
        return "no activation ranges recorded (compress with a sample)"
    if isinstance(module, CompressedConv2d) and isinstance(module.geometry.padding, str):
        return "string padding has no int8 conv kernel"
    weight = module.decoded_weight()  # type: ignore[operator]
    if weight.dim() not in (2, 4):
        return f"a {weight.dim()}-D weight has no int8 kernel"
    if _grid(module) is None:
        return "the weight's levels lie on no int8 grid (k-means or wide power-of-two levels)"
    return None


@register_form("int8_static_codes")
def int8_static_codes(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """The layer as a static int8 layer: its codes on the int8 grid (the same weight, exactly)
    and its recorded activation ranges."""
    if static_int8_refusal(module) is not None:
        return []
    ranges = module.activation_ranges()  # type: ignore[operator]
    codes, scale = _grid(module)  # type: ignore[misc]
    conv = isinstance(module, CompressedConv2d)

    def build() -> nn.Module:
        cls = StaticInt8Conv2d if conv else StaticInt8Linear
        layer = cls.like(module.to_dense(), per_channel=True)  # type: ignore[attr-defined,operator]
        with torch.no_grad():
            layer.codes.copy_(codes)
            layer.scale.copy_(scale)
            if module.bias is not None:
                layer.bias.copy_(module.bias)
        layer.set_ranges(*ranges)
        return layer.eval()

    label = "x86 conv2d" if conv else "x86 linear"
    return [(f"int8:{label} (static, codes once)", build)]
