"""Pruning-aware quantization: quantize a pruned layer so that its sparsity survives.

The quantizer is fitted on the kept weights only (per output channel or per tensor), and the
pruned weights are not quantized at all: they are exactly zero by the mask, whatever the levels
are (k-means and sign levels have no zero level; a clipping search or a percentile range fitted
on all weights would be pulled towards the zeros). The stored form is the mask as one bit per
weight plus a ``bits``-bit code per *kept* weight and the per-group levels, so a layer of ``n``
weights at sparsity ``s`` takes ``n/8 + bits·(1 − s)·n/8`` bytes plus its levels.

:func:`quantized_zero_fraction` measures the other side of the joint (the seed survey's Fig. 20):
with fewer bits the zero level's bin ``|w| < Δ/2`` widens, so more weights become exactly zero.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.config import MethodConfig, check_choice
from modelzip.core.context import Context
from modelzip.core.errors import ConfigError
from modelzip.core.module import CompressedModule, conv2d, conv_spec, load_dense, register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.prune.masked import _Masked, pack_mask, unpack_mask
from modelzip.quantize.packing import pack_bits, packed_bytes, unpack_bits
from modelzip.quantize.quantizer import (
    Levels,
    QuantizerConfig,
    dequantize_codes,
    quantize,
    quantize_tensor,
)
from modelzip.quantize.schemes import binarize, ternarize

__all__ = [
    "SparseQuantConv2d",
    "SparseQuantLinear",
    "SparseQuantizeConfig",
    "quantize_kept",
    "quantized_zero_fraction",
]


@dataclasses.dataclass
class KeptQuantized:
    """Codes of the kept weights (in row-major order of the weight) and per-group levels."""

    kept_codes: torch.Tensor
    scale: torch.Tensor | None
    offset: torch.Tensor | None
    levels: torch.Tensor | None


def _n_levels(cfg: QuantizerConfig) -> int:
    """Width of the level table of ``cfg`` (0 for uniform levels, stored as scale and offset)."""
    if cfg.levels.startswith("uniform"):
        return 0
    if cfg.levels == "log2":
        return 2 if cfg.bits == 1 else 2**cfg.bits - 1
    return 2**cfg.bits


def quantize_kept(
    weight: torch.Tensor,
    mask: torch.Tensor,
    cfg: QuantizerConfig,
    generator: torch.Generator | None = None,
) -> KeptQuantized:
    """Quantize the weights under ``mask`` only, one quantizer per group (``cfg.granularity`` is
    ``tensor`` or ``channel``) fitted on that group's kept values.

    Each group is quantized with :func:`~modelzip.quantize.quantizer.quantize_tensor`; a group
    with no kept weight gets neutral levels (it decodes to nothing).
    """
    if cfg.granularity not in ("tensor", "channel"):
        raise ConfigError(
            f"quantize_kept supports tensor or channel granularity, not {cfg.granularity!r}"
        )
    w = weight.detach().float()
    rows = w.reshape(1, -1) if cfg.granularity == "tensor" else w.reshape(w.shape[0], -1)
    keep = mask.reshape(rows.shape).to(rows.device)
    per_tensor = cfg.replace(granularity="tensor")
    width = _n_levels(cfg)
    codes, scales, offsets, tables = [], [], [], []
    for row, k in zip(rows, keep, strict=True):
        kept = row[k]
        if kept.numel() == 0:
            scales.append(row.new_ones(1))
            offsets.append(row.new_zeros(1))
            tables.append(row.new_zeros(1, max(width, 1)))
            continue
        q = quantize_tensor(kept, per_tensor, generator)
        codes.append(q.codes.reshape(-1))
        if q.levels is not None:
            tables.append(q.levels.float())
        else:
            scales.append(q.scale.float())
            offsets.append(q.offset.float())
    kept_codes = torch.cat(codes) if codes else rows.new_zeros(0, dtype=torch.long)
    if width:
        return KeptQuantized(kept_codes, None, None, torch.cat(tables))
    return KeptQuantized(kept_codes, torch.cat(scales), torch.cat(offsets), None)


class _SparseQuant(CompressedModule):
    """Shared storage: mask, kept codes, per-group levels; subclasses define the product."""

    mask: torch.Tensor
    packed: torch.Tensor
    scale: torch.Tensor | None
    offset: torch.Tensor | None
    levels: torch.Tensor | None
    bias: nn.Parameter | None

    def _init_storage(
        self,
        weight_shape: tuple[int, ...],
        kept: int,
        bits: int,
        granularity: str,
        n_levels: int,
        bias: bool,
    ) -> None:
        self.weight_shape, self.kept = tuple(weight_shape), kept
        self.weight_bits, self.granularity, self.n_levels = bits, granularity, n_levels
        groups = 1 if granularity == "tensor" else weight_shape[0]
        self.register_buffer("mask", torch.zeros(self.weight_shape, dtype=torch.bool))
        self.register_buffer("packed", torch.zeros(packed_bytes(kept, bits), dtype=torch.uint8))
        if n_levels:
            self.register_buffer("levels", torch.zeros(groups, n_levels))
            self.scale = self.offset = None
        else:
            self.register_buffer("scale", torch.ones(groups))
            self.register_buffer("offset", torch.zeros(groups))
            self.levels = None
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None
        self._cache: torch.Tensor | None = None

    def _storage_spec(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "bits": self.weight_bits,
            "granularity": self.granularity,
            "n_levels": self.n_levels,
            "bias": self.bias is not None,
        }

    @torch.no_grad()
    def _set(self, mask: torch.Tensor, q: KeptQuantized, bias: torch.Tensor | None) -> None:
        self.mask.copy_(mask)
        self.packed.copy_(pack_bits(q.kept_codes, self.weight_bits))
        if self.levels is not None:
            self.levels.copy_(q.levels)
        else:
            self.scale.copy_(q.scale)
            self.offset.copy_(q.offset)
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias.float())
        self._cache = None

    def codes(self) -> torch.Tensor:
        """Codes shaped like the weight (0 where pruned)."""
        codes = torch.zeros(self.weight_shape, dtype=torch.long, device=self.packed.device)
        codes[self.mask] = unpack_bits(self.packed, self.weight_bits, self.kept)
        return codes

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The decoded weight; pruned weights are exactly zero."""
        cached = not self.training and not torch.is_grad_enabled()
        if self._cache is not None and cached:
            return self._cache.to(dtype)
        w = dequantize_codes(
            self.codes(), self.weight_shape, self.granularity, 0,
            self.scale, self.offset, self.levels,
        )  # fmt: skip
        w = torch.where(self.mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
        if cached:
            self._cache = w
        return w.to(dtype)

    def sparsity(self) -> float:
        return 1.0 - self.kept / math.prod(self.weight_shape)

    def param_count(self) -> int:
        return self.kept + (self.bias.numel() if self.bias is not None else 0)

    def packed_state(self) -> dict[str, torch.Tensor]:
        state = {"mask_bits": pack_mask(self.mask), "packed": self.packed}
        for name in ("scale", "offset", "levels"):
            if getattr(self, name) is not None:
                state[name] = getattr(self, name)
        if self.bias is not None:
            state["bias"] = self.bias.detach()
        return state

    @torch.no_grad()
    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        mask = unpack_mask(state["mask_bits"], self.weight_shape)
        if int(mask.sum()) != self.kept:
            raise ValueError(f"a mask of {int(mask.sum())} kept weights for kept={self.kept}")
        self.mask.copy_(mask)
        self.packed.copy_(state["packed"])
        for name in ("scale", "offset", "levels"):
            if getattr(self, name) is not None:
                getattr(self, name).copy_(state[name])
        if self.bias is not None:
            self.bias.copy_(state["bias"])
        self._cache = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def _dense_weight_into(self, dense: nn.Module) -> nn.Module:
        return load_dense(dense, self.dequantized_weight(), self.bias)


@register_layer
class SparseQuantLinear(_SparseQuant):
    """``nn.Linear`` with a pruning mask and ``bits``-bit codes for the kept weights."""

    stands_for = "Linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kept: int,
        bits: int,
        granularity: str = "channel",
        n_levels: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_storage((out_features, in_features), kept, bits, granularity, n_levels, bias)

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            **self._storage_spec(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def to_dense(self) -> nn.Linear:
        return self._dense_weight_into(
            nn.Linear(self.in_features, self.out_features, self.bias is not None)
        )


@register_layer
class SparseQuantConv2d(_SparseQuant):
    """``nn.Conv2d`` with a pruning mask and ``bits``-bit codes for the kept weights."""

    stands_for = "Conv2d"

    def __init__(
        self,
        conv: dict[str, Any],
        kept: int,
        bits: int,
        granularity: str = "channel",
        n_levels: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.conv_args = {k: tuple(v) if isinstance(v, list) else v for k, v in conv.items()}
        c = self.conv_args
        shape = (c["out_channels"], c["in_channels"] // c["groups"], *c["kernel_size"])
        self._init_storage(shape, kept, bits, granularity, n_levels, bias)

    def spec(self) -> dict[str, Any]:
        conv = {k: list(v) if isinstance(v, tuple) else v for k, v in self.conv_args.items()}
        return {"conv": conv, **self._storage_spec()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv_args
        w = self.dequantized_weight(x.dtype)
        return conv2d(x, w, self.bias, c)

    def to_dense(self) -> nn.Conv2d:
        return self._dense_weight_into(nn.Conv2d(**self.conv_args, bias=self.bias is not None))


def sparse_quantized_layer(
    module: nn.Module, cfg: QuantizerConfig, generator: torch.Generator | None = None
) -> _SparseQuant:
    """The pruning-aware quantized form of a masked layer (its mask) or of a plain
    ``Linear`` / ``Conv2d`` (its exact zeros are the pruned weights)."""
    if isinstance(module, _Masked):
        weight, mask = module.masked_weight().detach(), module.mask.detach().clone()
        kind = module.stands_for
        conv = module.conv_args if kind == "Conv2d" else None
    elif type(module) in (nn.Linear, nn.Conv2d):
        weight = module.weight.detach()
        mask = weight != 0
        kind = type(module).__name__
        if kind == "Conv2d" and module.padding_mode != "zeros":
            raise SkipLayer(f"padding_mode {module.padding_mode!r} is not supported")
        conv = conv_spec(module) if kind == "Conv2d" else None
    else:
        raise SkipLayer(f"{type(module).__name__} has no pruning-aware quantized form")
    if weight.dtype != torch.float32:
        raise SkipLayer(
            f"weight dtype {weight.dtype} is not supported; the layer computes in float32"
        )
    q = quantize_kept(weight, mask, cfg, generator)
    kept, width = int(mask.sum()), _n_levels(cfg)
    has_bias = module.bias is not None
    if kind == "Linear":
        out_f, in_f = weight.shape
        layer: _SparseQuant = SparseQuantLinear(
            in_f, out_f, kept, cfg.bits, cfg.granularity, width, has_bias
        )
    else:
        assert conv is not None
        conv = {k: v for k, v in conv.items() if k in _CONV_KEYS}
        layer = SparseQuantConv2d(conv, kept, cfg.bits, cfg.granularity, width, has_bias)
    layer = layer.to(weight.device)
    layer._set(mask, q, module.bias)
    return layer


_CONV_KEYS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
)


@dataclasses.dataclass(frozen=True)
class SparseQuantizeConfig(MethodConfig):
    """Pruning-aware weight quantization: the quantizer is fitted on the kept weights only and
    pruned weights stay exactly zero, so the sparsity pattern survives quantization.

    Applies to pruned layers (``MaskedLinear`` / ``MaskedConv2d``, also those of
    ``quant_aware_prune``), and to plain ``Linear`` / ``Conv2d`` whose exact zeros count as
    pruned. Fields as in :class:`~modelzip.quantize.quantizer.QuantizerConfig`; granularity is
    ``tensor`` or ``channel``.
    """

    method = "sparse_quantize"
    bits: int = 4
    levels: Levels = "uniform-symmetric"
    formulation: Literal["heuristic", "optimized"] = "heuristic"
    range: Literal["minmax", "percentile"] = "minmax"
    percentile: float = 99.9
    rounding: Literal["nearest", "stochastic"] = "nearest"
    granularity: Literal["tensor", "channel"] = "channel"

    def quantizer(self) -> QuantizerConfig:
        fields = {f.name for f in dataclasses.fields(QuantizerConfig)} - {"group_size"}
        return QuantizerConfig(**{k: getattr(self, k) for k in fields})

    def validate(self) -> None:
        check_choice(self, "granularity", ("tensor", "channel"))
        try:
            self.quantizer()
        except ConfigError as e:
            raise ConfigError(str(e).replace("QuantizerConfig", type(self).__name__)) from None


@register_method(SparseQuantizeConfig, family="joint", example=SparseQuantizeConfig(bits=4))
def sparse_quantize(module: nn.Module, config: SparseQuantizeConfig, ctx: Context) -> nn.Module:
    """Pruning-aware quantization: levels fitted on kept weights, pruned weights exactly zero."""
    device = getattr(getattr(module, "weight", None), "device", torch.device("cpu"))
    gen = ctx.generator(device) if config.rounding == "stochastic" else None
    return sparse_quantized_layer(module, config.quantizer(), gen)


Scheme = Literal["uniform", "log2", "ternary", "binary"]


def quantized_zero_fraction(
    weight: torch.Tensor, scheme: Scheme = "uniform", bits: int = 8, per_channel: bool = True
) -> float:
    """Fraction of exact zeros in ``weight`` after quantization (the seed survey's Fig. 20).

    ``uniform``: symmetric ``Δ·k`` levels, ``Δ = max|w| / (2^(b−1) − 1)``; a weight becomes zero
    when ``|w| ≤ Δ/2``, so the fraction grows as ``b`` falls. ``log2``: ``0, ±2^e`` levels.
    ``ternary``: TWN's ``|w| ≤ 0.7·E|w|``. ``binary``: ``±α``, never zero.
    """
    gran = "channel" if per_channel else "tensor"
    if scheme in ("binary", "ternary"):
        rows = weight.reshape(weight.shape[0] if per_channel else 1, -1)
        if scheme == "binary":
            codes, levels = binarize(weight, per_channel)
        else:
            codes, levels = ternarize(weight, per_channel)
        values = torch.gather(levels, 1, codes.reshape(rows.shape))
        return float((values == 0).float().mean())
    levels = "uniform-symmetric" if scheme == "uniform" else "log2"
    q = quantize(
        weight.detach().float(), QuantizerConfig(bits=bits, levels=levels, granularity=gran)
    )
    return float((q[1] == 0).float().mean())
