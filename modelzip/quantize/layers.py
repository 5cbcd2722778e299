"""Linear and convolution layers whose weights are stored as bit-packed codes plus levels.

One storage serves every weight quantizer of this family: ``bits``-bit codes packed densely
(:mod:`modelzip.quantize.packing`), and per group either an affine map ``offset + scale·code``
(uniform levels) or a table ``levels[group, code]`` (power-of-two, k-means, binary, ternary,
multi-bit bases). A 2-bit layer therefore saves a quarter of a byte per weight plus its levels.

Products are computed in float with the weight decoded on the fly (and cached in eval mode);
bit-serial and packed-binary kernels are the kernels family's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.module import CompressedModule, conv2d, conv_spec, load_dense, register_layer
from modelzip.core.registry import SkipLayer
from modelzip.quantize.packing import pack_bits, packed_bytes, unpack_bits
from modelzip.quantize.quantizer import Quantized, dequantize_codes, group_rows

__all__ = ["QuantConv2d", "QuantLinear", "quantized_layer", "require_float32"]


class _QuantWeight(CompressedModule):
    """Shared storage and decoding; subclasses define the product."""

    packed: torch.Tensor
    scale: torch.Tensor | None
    offset: torch.Tensor | None
    levels: torch.Tensor | None
    bias: nn.Parameter | None

    def _init_storage(
        self,
        weight_shape: tuple[int, ...],
        bits: int,
        granularity: str,
        group_size: int,
        n_levels: int,
        bias: bool,
    ) -> None:
        self.weight_shape = tuple(weight_shape)
        self.weight_bits = bits
        self.granularity, self.group_size, self.n_levels = granularity, group_size, n_levels
        numel = math.prod(weight_shape)
        groups = group_rows(torch.empty(weight_shape, device="meta"), granularity, group_size)
        n_groups = groups.shape[0]
        self.register_buffer("packed", torch.zeros(packed_bytes(numel, bits), dtype=torch.uint8))
        if n_levels:  # a level table
            self.register_buffer("levels", torch.zeros(n_groups, n_levels))
            self.scale = self.offset = None
        else:
            self.register_buffer("scale", torch.ones(n_groups))
            self.register_buffer("offset", torch.zeros(n_groups))
            self.levels = None
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None
        self._cache: torch.Tensor | None = None

    def _storage_spec(self) -> dict[str, Any]:
        return {
            "bits": self.weight_bits,
            "granularity": self.granularity,
            "group_size": self.group_size,
            "n_levels": self.n_levels,
            "bias": self.bias is not None,
        }

    @torch.no_grad()
    def _set(self, q: Quantized, bias: torch.Tensor | None) -> None:
        self.packed.copy_(pack_bits(q.codes, q.bits))
        if self.levels is not None:
            assert q.levels is not None
            self.levels.copy_(q.levels)
        else:
            assert q.scale is not None and q.offset is not None
            self.scale.copy_(q.scale)
            self.offset.copy_(q.offset)
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias.float())
        self._cache = None

    def codes(self) -> torch.Tensor:
        """The unpacked codes, shaped like the weight."""
        numel = math.prod(self.weight_shape)
        return unpack_bits(self.packed, self.weight_bits, numel).reshape(self.weight_shape)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # The decoded weight is cached for inference only: a tensor made under inference_mode
        # must not enter autograd, and training may change the levels.
        cached = not self.training and not torch.is_grad_enabled()
        if self._cache is not None and cached:
            return self._cache.to(dtype)
        w = dequantize_codes(
            self.codes(), self.weight_shape, self.granularity, self.group_size,
            self.scale, self.offset, self.levels,
        )  # fmt: skip
        if cached:
            self._cache = w
        return w.to(dtype)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def param_count(self) -> int:
        return math.prod(self.weight_shape) + (self.bias.numel() if self.bias is not None else 0)

    def _dense_weight_into(self, dense: nn.Module) -> nn.Module:
        return load_dense(dense, self.dequantized_weight(), self.bias)


@register_layer
class QuantLinear(_QuantWeight):
    """``nn.Linear`` with a ``bits``-bit packed weight."""

    stands_for = "Linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        granularity: str = "channel",
        group_size: int = 64,
        n_levels: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_storage(
            (out_features, in_features), bits, granularity, group_size, n_levels, bias
        )

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                **self._storage_spec()}  # fmt: skip

    @classmethod
    def from_quantized(cls, dense: nn.Linear, q: Quantized) -> QuantLinear:
        n_levels = 0 if q.levels is None else q.levels.shape[1]
        layer = cls(
            dense.in_features, dense.out_features, q.bits, q.granularity, q.group_size,
            n_levels, dense.bias is not None,
        ).to(dense.weight.device)  # fmt: skip
        layer._set(q, dense.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def to_dense(self) -> nn.Linear:
        return self._dense_weight_into(
            nn.Linear(self.in_features, self.out_features, self.bias is not None)
        )


@register_layer
class QuantConv2d(_QuantWeight):
    """``nn.Conv2d`` with a ``bits``-bit packed weight."""

    stands_for = "Conv2d"

    def __init__(
        self,
        conv: dict[str, Any],
        bits: int,
        granularity: str = "channel",
        group_size: int = 64,
        n_levels: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.conv_args = {k: tuple(v) if isinstance(v, list) else v for k, v in conv.items()}
        c = self.conv_args
        shape = (c["out_channels"], c["in_channels"] // c["groups"], *c["kernel_size"])
        self._init_storage(shape, bits, granularity, group_size, n_levels, bias)

    def spec(self) -> dict[str, Any]:
        conv = {k: list(v) if isinstance(v, tuple) else v for k, v in self.conv_args.items()}
        return {"conv": conv, **self._storage_spec()}

    @classmethod
    def from_quantized(cls, dense: nn.Conv2d, q: Quantized) -> QuantConv2d:
        if dense.padding_mode != "zeros":
            raise SkipLayer(f"padding_mode {dense.padding_mode!r} is not supported")
        conv = conv_spec(dense)
        n_levels = 0 if q.levels is None else q.levels.shape[1]
        layer = cls(conv, q.bits, q.granularity, q.group_size, n_levels, dense.bias is not None)
        layer = layer.to(dense.weight.device)
        layer._set(q, dense.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv_args
        w = self.dequantized_weight(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
            w = w.contiguous(memory_format=torch.channels_last)
        return conv2d(x, w, self.bias, c)

    def to_dense(self) -> nn.Conv2d:
        return self._dense_weight_into(nn.Conv2d(**self.conv_args, bias=self.bias is not None))


def require_float32(module: nn.Module) -> None:
    """Skip a layer whose weight is not float32: the quantized layers store float32 levels and
    compute in float32, so a float64 or bfloat16 model would get layers of another dtype than
    its inputs (found by tests/reliability: the forward pass then failed with a dtype error)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype != torch.float32:
        raise SkipLayer(
            f"weight dtype {weight.dtype} is not supported; quantized layers compute in "
            "float32 (convert the model with .float() first)"
        )


def quantized_layer(module: nn.Module, q: Quantized) -> QuantLinear | QuantConv2d:
    """The packed layer for dense ``module`` with its weight quantized as ``q``."""
    if isinstance(module, CompressedModule):
        raise SkipLayer(
            f"already compressed as {type(module).__name__}; weight quantization applies to "
            "dense layers (combinations of methods are the joint family's)"
        )
    if type(module) is nn.Linear:
        return QuantLinear.from_quantized(module, q)
    if type(module) is nn.Conv2d:
        return QuantConv2d.from_quantized(module, q)
    raise SkipLayer(f"{type(module).__name__} has no packed-weight form")
