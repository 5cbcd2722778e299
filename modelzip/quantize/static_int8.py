"""Static int8 post-training quantization: int8 layers with calibrated activation ranges.

:class:`StaticInt8Linear` and :class:`StaticInt8Conv2d` are the int8 layers with the ``"static"``
activation policy (:class:`~modelzip.quantize.int8.Int8Format`): uint8 input and output on
calibrated ranges around int8 products on PyTorch's quantized engine (Jacob et al., CVPR 2018),
with 7-bit inputs where int8 products can saturate (:mod:`modelzip.kernels.isa`). This module
calibrates them (:func:`static_int8_layer`).

Calibration is sequential: a layer is calibrated on the model whose earlier layers are already
quantized, so each range sees the error upstream of it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelzip.core.context import Context
from modelzip.core.errors import ModelError
from modelzip.core.module import register_layer
from modelzip.data.folder import as_tensor, is_images
from modelzip.kernels.int8 import QMAX_REDUCED, qparams, reduced_qparams
from modelzip.quantize.int8 import Int8Conv2d, Int8Linear
from modelzip.quantize.observers import Observer

__all__ = [
    "QMAX_REDUCED",
    "StaticInt8Conv2d",
    "StaticInt8Linear",
    "calibration_batches",
    "qparams",
    "reduced_qparams",
]


def calibration_batches(ctx: Context, size: int, batch: int = 256) -> list[torch.Tensor]:
    """Inputs to calibrate on: the first ``size`` training images of ``ctx.data``, else the
    sample batch."""
    x = getattr(ctx.data, "x_train", None)
    if is_images(x):
        x = as_tensor(x[:size])
    elif ctx.sample is not None:
        x = ctx.sample
    else:
        raise ModelError("static int8 needs calibration inputs: pass data= or sample= to compress")
    return list(torch.split(x, batch))


@torch.no_grad()
def observe_layer(
    model: nn.Module,
    layer: nn.Module,
    batches: list[torch.Tensor],
    observer: str,
    percentile: float,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Input and output ranges of ``layer`` while ``model`` runs on ``batches``."""
    seen_in, seen_out = Observer(observer, 8, percentile), Observer(observer, 8, percentile)

    def hook(_: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        seen_in.observe(args[0])
        seen_out.observe(out)

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    device = next(iter(layer.buffers()), next(iter(layer.parameters()))).device
    try:
        model.eval()
        for xb in batches:
            model(xb.to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return seen_in.range(), seen_out.range()


@register_layer
class StaticInt8Linear(Int8Linear):
    """``nn.Linear`` with int8 weights and statically quantized uint8 input and output
    (:class:`~modelzip.quantize.int8.Int8Linear` with the ``"static"`` policy)."""

    policy = "static"
    #: Already on PyTorch's int8 engine with calibrated static activations: its other forms are
    #: the same linear on modelzip's native int8 GEMM (with VNNI) and the dequantized float
    #: layer, each kept when measured faster (alone, or for the whole model against the uint8
    #: chain).
    executable_forms = ("int8_native_linear", "dequantized")
    runs_own_kernel = True


@register_layer
class StaticInt8Conv2d(Int8Conv2d):
    """``nn.Conv2d`` with int8 weights and statically quantized uint8 input and output
    (:class:`~modelzip.quantize.int8.Int8Conv2d` with the ``"static"`` policy)."""

    policy = "static"
    #: Already on PyTorch's int8 engine with calibrated static activations: its other forms are
    #: the same conv prepacked for the oneDNN engine and the dequantized float layer, each kept
    #: when measured faster (alone, or for the whole model against the uint8 chain).
    executable_forms = ("int8_onednn_conv", "int8_native_conv", "dequantized")
    runs_own_kernel = True


def static_int8_layer(module: nn.Module, config: Any, ctx: Context) -> nn.Module:
    """The static int8 form of dense ``module``, calibrated in ``ctx.model`` (an
    :class:`~modelzip.quantize.int8_method.Int8Config` with ``activations="static"``)."""
    cls = StaticInt8Linear if isinstance(module, nn.Linear) else StaticInt8Conv2d
    layer = cls.quantized(module)  # refuses what it cannot hold before calibrating
    model = ctx.model if ctx.model is not None else module
    batches = calibration_batches(ctx, config.calibration_size)
    layer.set_ranges(*observe_layer(model, module, batches, config.observer, config.percentile))
    return layer
