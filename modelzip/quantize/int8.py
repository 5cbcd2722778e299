"""Symmetric int8 weight quantization, stored one byte per weight.

Per output channel ``k`` (or per tensor) the scale is ``Δ_k = max|W_k| / 127`` and the codes are
``q = clamp(round(W / Δ), -127, 127)`` (the symmetric range, so ``-q`` is always representable).
A zero channel gets ``Δ = 1`` and codes 0, so all-zero and constant weights are handled exactly.

Execution: a linear layer on the CPU can run its products on PyTorch's own int8 kernel
(``activations="dynamic"``: activations quantized per batch to 7 bits, PyTorch's ``reduce_range``,
so that the uint8 × int8 products cannot saturate on CPUs without VNNI; fbgemm/x86 int8 GEMM), or
dequantize the weight on the fly and multiply in float (``activations="float"``, the only path on
other devices and for convolutions), or quantize activations with ranges calibrated beforehand and
run both linear and convolution layers on the int8 engine (``activations="static"``, see
:mod:`modelzip.quantize.static_int8`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.errors import ConfigError
from modelzip.core.module import CompressedModule, conv2d, conv_args, dense_linear, register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.quantize.layers import require_float32

QMAX = 127


def quantize_symmetric_int8(
    weight: torch.Tensor, per_channel: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int8, same shape) and scales (float32, per output channel or one) of ``weight``."""
    w = weight.detach().float()
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1) if per_channel else w.abs().amax().reshape(1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    view = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w / scale.reshape(view)), -QMAX, QMAX).to(torch.int8)
    return codes, scale


class _Int8(CompressedModule):
    weight_bits = 8
    codes: torch.Tensor
    scale: torch.Tensor
    bias: nn.Parameter | None

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        view = (-1,) + (1,) * (self.codes.dim() - 1)
        return self.codes.to(dtype) * self.scale.to(dtype).reshape(view)

    def param_count(self) -> int:
        return self.codes.numel() + (self.bias.numel() if self.bias is not None else 0)

    def _init_storage(self, weight_shape: tuple[int, ...], bias: bool, per_channel: bool) -> None:
        self.register_buffer("codes", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(weight_shape[0] if per_channel else 1))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None

    @torch.no_grad()
    def _quantize_from(self, dense: nn.Module, per_channel: bool) -> None:
        codes, scale = quantize_symmetric_int8(dense.weight, per_channel)
        self.codes.copy_(codes)
        self.scale.copy_(scale)
        if self.bias is not None:
            self.bias.copy_(dense.bias.float())


@register_layer
class Int8Linear(_Int8):
    """``nn.Linear`` with int8 weight codes and float scales."""

    stands_for = "Linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        per_channel: bool = True,
        activations: str = "float",
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.per_channel, self.activations = per_channel, activations
        self._init_storage((out_features, in_features), bias, per_channel)
        self._packed: Any = None  # fbgemm's prepacked weight, built on first CPU call

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Int8Config) -> Int8Linear:
        layer = cls(
            dense.in_features,
            dense.out_features,
            dense.bias is not None,
            config.per_channel,
            config.activations,
        ).to(dense.weight.device)
        layer._quantize_from(dense, config.per_channel)
        return layer

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "per_channel": self.per_channel,
            "activations": self.activations,
        }

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._packed = None  # new codes: the prepacked copy is stale
        super()._load_from_state_dict(*args, **kwargs)

    def _prepacked(self) -> Any:
        if self._packed is None:
            with warnings.catch_warnings():  # quantized-tensor constructors warn of deprecation
                warnings.simplefilter("ignore")
                if self.per_channel:
                    zero = torch.zeros(self.out_features, dtype=torch.long)
                    qw = torch._make_per_channel_quantized_tensor(
                        self.codes.cpu(), self.scale.double().cpu(), zero, 0
                    )
                else:
                    qw = torch._make_per_tensor_quantized_tensor(
                        self.codes.cpu(), float(self.scale), 0
                    )
                bias = self.bias.detach().float().cpu() if self.bias is not None else None
                self._packed = torch.ops.quantized.linear_prepack(qw, bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dynamic = (
            self.activations == "dynamic"
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
        )
        if dynamic:
            shape = x.shape
            y = torch.ops.quantized.linear_dynamic(
                x.reshape(-1, shape[-1]).contiguous(), self._prepacked(), True
            )
            return y.reshape(*shape[:-1], self.out_features)
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def to_dense(self) -> nn.Linear:
        return dense_linear(self.dequantized_weight(), self.bias)

    def train(self, mode: bool = True) -> Int8Linear:
        self._packed = None if mode else self._packed
        return super().train(mode)


@register_layer
class Int8Conv2d(_Int8):
    """``nn.Conv2d`` with int8 weight codes; computes with the weight dequantized on the fly."""

    stands_for = "Conv2d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | str = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        bias: bool = True,
        per_channel: bool = True,
    ) -> None:
        super().__init__()
        self.conv_args = conv_args(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self.per_channel = per_channel
        shape = (out_channels, in_channels // groups, *self.conv_args["kernel_size"])
        self._init_storage(shape, bias, per_channel)

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Int8Config) -> Int8Conv2d:
        if dense.padding_mode != "zeros":
            raise SkipLayer(f"padding_mode {dense.padding_mode!r} is not supported")
        layer = cls(
            dense.in_channels,
            dense.out_channels,
            dense.kernel_size,
            dense.stride,
            dense.padding,
            dense.dilation,
            dense.groups,
            dense.bias is not None,
            config.per_channel,
        ).to(dense.weight.device)
        layer._quantize_from(dense, config.per_channel)
        return layer

    def spec(self) -> dict[str, Any]:
        spec = {k: list(v) if isinstance(v, tuple) else v for k, v in self.conv_args.items()}
        return {**spec, "per_channel": self.per_channel}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_args
        w = self.dequantized_weight(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)
        return conv2d(x, w, self.bias, a)

    def to_dense(self) -> nn.Conv2d:
        dense = nn.Conv2d(**self.conv_args).to(self.codes.device)
        with torch.no_grad():
            dense.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


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
    """

    method = "int8"
    per_channel: bool = True
    activations: Literal["float", "dynamic", "static"] = "dynamic"
    observer: Literal["minmax", "percentile", "mse"] = "minmax"
    percentile: float = 99.99
    calibration_size: int = 512

    def validate(self) -> None:
        check_range(self, "percentile", 50, 100, low_open=True)
        check_range(self, "calibration_size", 1)
        if self.activations == "static" and not self.per_channel:
            raise ConfigError(
                "Int8Config.per_channel=False is not allowed with activations='static' "
                "(the static path uses per-channel weights); allowed: True"
            )


_LAYERS = {nn.Linear: Int8Linear, nn.Conv2d: Int8Conv2d}


@register_method(Int8Config, family="quantize", example=Int8Config())
def int8(module: nn.Module, config: Int8Config, ctx: Context) -> nn.Module:
    """Symmetric per-channel int8 weights, one byte per weight."""
    if isinstance(module, CompressedModule):
        raise SkipLayer(
            f"already compressed as {type(module).__name__}; int8 applies to dense layers "
            "(combinations of methods are the joint family's)"
        )
    cls = _LAYERS.get(type(module))
    if cls is None:
        raise SkipLayer(f"{type(module).__name__} has no int8 form")
    require_float32(module)
    if config.activations == "static":
        from modelzip.quantize.static_int8 import static_int8_layer

        return static_int8_layer(module, config, ctx)
    return cls.from_dense(module, config)
