"""Static int8 post-training quantization: weights and activations, on PyTorch's int8 kernels.

Each layer quantizes its input with a scale and zero point calibrated beforehand (uint8, affine),
multiplies by int8 per-channel weights on the x86/oneDNN quantized engine
(``torch.ops.quantized.linear`` / ``conv2d``, int32 accumulation) and requantizes its output
with a calibrated output range (Jacob et al., CVPR 2018). Elsewhere than the CPU, and while
autograd records, the same arithmetic is simulated in float (fake quantization).

Where int8 products can saturate — x86 without VNNI, where the engines add pairs of uint8 ×
int8 products into int16 (:mod:`modelzip.kernels.isa`) — the input is quantized on 7 bits: the
calibrated range is kept and split into 128 steps instead of 256 (codes 0..127, PyTorch's
``reduce_range``). The kernels and the simulation both use that grid, so they agree there as
closely as with VNNI; the buffers keep the 8-bit calibration, and the grid is chosen by the
machine that runs the layer.

Calibration is sequential: a layer is calibrated on the model whose earlier layers are already
quantized, so each range sees the error upstream of it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.context import Context
from modelzip.core.errors import ModelError
from modelzip.core.module import conv2d, register_layer
from modelzip.core.registry import SkipLayer
from modelzip.kernels import isa
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

QMIN, QMAX = 0, 255
#: The top input code where int8 products can saturate (:func:`isa.reduced_int8_range`).
QMAX_REDUCED = 127


def qparams(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of the uint8 affine map covering ``[lo, hi]`` (containing 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (QMAX - QMIN) if hi > lo else 1.0
    zero = round(QMIN - lo / scale)
    return float(scale), max(QMIN, min(QMAX, zero))


def reduced_qparams(scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 7-bit grid (codes ``0..127``) over the range of the 8-bit grid ``(scale, zero)``:
    ``[-zero·scale, (255 - zero)·scale]`` in 127 steps of ``255/127·scale``."""
    zero7 = torch.round(zero * (QMAX_REDUCED / QMAX)).clamp(QMIN, QMAX_REDUCED).long()
    return scale * (QMAX / QMAX_REDUCED), zero7


def calibration_batches(ctx: Context, size: int, batch: int = 256) -> list[torch.Tensor]:
    """Inputs to calibrate on: the first ``size`` training images of ``ctx.data``, else the
    sample batch."""
    x = getattr(ctx.data, "x_train", None)
    if isinstance(x, torch.Tensor) and len(x):
        x = x[:size]
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


class _Static:
    """Mixin: calibrated input and output quantization around an int8 layer."""

    activations = "static"
    in_scale: torch.Tensor
    in_zero: torch.Tensor
    out_scale: torch.Tensor
    out_zero: torch.Tensor

    def _init_qparams(self) -> None:
        for name in ("in_scale", "out_scale"):
            self.register_buffer(name, torch.ones(()))  # type: ignore[attr-defined]
        for name in ("in_zero", "out_zero"):
            self.register_buffer(name, torch.zeros((), dtype=torch.long))  # type: ignore[attr-defined]

    @torch.no_grad()
    def set_ranges(self, rin: tuple[float, float], rout: tuple[float, float]) -> None:
        for (lo, hi), s, z in ((rin, "in_scale", "in_zero"), (rout, "out_scale", "out_zero")):
            scale, zero = qparams(lo, hi)
            getattr(self, s).fill_(scale)
            getattr(self, z).fill_(zero)
        self._packed = None

    def input_qparams(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Scale, zero point and top code of the input's quantization on this machine: the
        calibrated 8-bit grid, or its 7-bit form (:func:`reduced_qparams`) where int8 products
        can saturate (:func:`modelzip.kernels.isa.reduced_int8_range`)."""
        if isa.reduced_int8_range():
            return (*reduced_qparams(self.in_scale, self.in_zero), QMAX_REDUCED)
        return self.in_scale, self.in_zero, QMAX

    def _fake(
        self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int = QMAX
    ) -> torch.Tensor:
        q = torch.clamp(torch.round(x / scale) + zero, QMIN, qmax)
        return (q - zero) * scale

    def _fake_input(self, x: torch.Tensor) -> torch.Tensor:
        return self._fake(x, *self.input_qparams())

    def _use_kernels(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        scale_t, zero_t, qmax = self.input_qparams()
        scale, zero = float(scale_t), int(zero_t)
        if qmax < QMAX:  # quint8 would go up to 255: clip to the top 7-bit code first
            x = x.clamp(max=(qmax - zero) * scale)
        with warnings.catch_warnings():  # quantized-tensor constructors warn of deprecation
            warnings.simplefilter("ignore")
            return torch.quantize_per_tensor(x, scale, zero, torch.quint8)


def _per_channel_qweight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # quantized-tensor constructors warn of deprecation
        warnings.simplefilter("ignore")
        zero = torch.zeros(codes.shape[0], dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(codes.cpu(), scale.double().cpu(), zero, 0)


@register_layer
class StaticInt8Linear(_Static, Int8Linear):
    """``nn.Linear`` with int8 weights and statically quantized uint8 input and output."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias, per_channel=True, activations="static")
        self._init_qparams()

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}  # fmt: skip

    def _prepacked(self) -> Any:
        if self._packed is None:
            bias = self.bias.detach().float().cpu() if self.bias is not None else None
            qw = _per_channel_qweight(self.codes, self.scale)
            self._packed = torch.ops.quantized.linear_prepack(qw, bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_kernels(x):
            shape = x.shape
            qx = self._quantize_input(x.reshape(-1, shape[-1]).contiguous())
            qy = torch.ops.quantized.linear(
                qx, self._prepacked(), float(self.out_scale), int(self.out_zero)
            )
            return qy.dequantize().reshape(*shape[:-1], self.out_features)
        xq = self._fake_input(x)
        y = F.linear(xq, self.dequantized_weight(x.dtype), self.bias)
        return self._fake(y, self.out_scale, self.out_zero)


@register_layer
class StaticInt8Conv2d(_Static, Int8Conv2d):
    """``nn.Conv2d`` with int8 weights and statically quantized uint8 input and output."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["per_channel"] = True
        super().__init__(*args, **kwargs)
        self._init_qparams()
        self._packed: Any = None

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        spec.pop("per_channel")
        return spec

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def _prepacked(self) -> Any:
        if self._packed is None:
            a = self.conv_args
            if isinstance(a["padding"], str):
                raise ModelError("static int8 convolutions need numeric padding")
            bias = self.bias.detach().float().cpu() if self.bias is not None else None
            qw = _per_channel_qweight(self.codes, self.scale)
            self._packed = torch.ops.quantized.conv2d_prepack(
                qw, bias, list(a["stride"]), list(a["padding"]), list(a["dilation"]), a["groups"]
            )
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_kernels(x) and not isinstance(self.conv_args["padding"], str):
            qx = self._quantize_input(x)
            qy = torch.ops.quantized.conv2d(
                qx, self._prepacked(), float(self.out_scale), int(self.out_zero)
            )
            return qy.dequantize()
        a = self.conv_args
        xq = self._fake_input(x)
        w = self.dequantized_weight(x.dtype)
        y = conv2d(xq, w, self.bias, a)
        return self._fake(y, self.out_scale, self.out_zero)

    def train(self, mode: bool = True) -> StaticInt8Conv2d:
        self._packed = None if mode else self._packed
        return super().train(mode)


def static_int8_layer(module: nn.Module, config: Any, ctx: Context) -> nn.Module:
    """The static int8 form of dense ``module``, calibrated in ``ctx.model`` (an
    :class:`~modelzip.quantize.int8.Int8Config` with ``activations="static"``)."""
    model = ctx.model if ctx.model is not None else module
    batches = calibration_batches(ctx, config.calibration_size)
    rin, rout = observe_layer(model, module, batches, config.observer, config.percentile)
    if isinstance(module, nn.Linear):
        layer: _Static = StaticInt8Linear(
            module.in_features, module.out_features, module.bias is not None
        )
    else:
        if module.padding_mode != "zeros":
            raise SkipLayer(f"padding_mode {module.padding_mode!r} is not supported")
        layer = StaticInt8Conv2d(
            module.in_channels, module.out_channels, module.kernel_size, module.stride,
            module.padding, module.dilation, module.groups, module.bias is not None,
        )  # fmt: skip
    layer = layer.to(module.weight.device)  # type: ignore[attr-defined]
    layer._quantize_from(module, True)  # type: ignore[attr-defined]
    layer.set_ranges(rin, rout)
    return layer  # type: ignore[return-value]
