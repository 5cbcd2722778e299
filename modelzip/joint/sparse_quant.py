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
from torch import nn

from modelzip.core.composition import Composition
from modelzip.core.compressed import CompressedConv2d, CompressedLinear
from modelzip.core.config import MethodConfig, check_choice
from modelzip.core.context import Context
from modelzip.core.errors import ConfigError
from modelzip.core.module import register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.prune.masked import _Masked, pack_mask, unpack_mask
from modelzip.quantize.layers import QuantFormat, plain_like, require_float32
from modelzip.quantize.packing import unpack_bits
from modelzip.quantize.quantizer import (
    QuantizerChoices,
    QuantizerConfig,
    quantize,
    quantize_tensor,
)
from modelzip.quantize.schemes import binarize, ternarize

__all__ = [
    "SparseQuantConv2d",
    "SparseQuantFormat",
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


def scatter_codes(packed: torch.Tensor, mask: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes shaped like ``mask``: the ``bits``-bit ``packed`` codes of the kept weights (in
    row-major order) where ``mask`` is set, 0 elsewhere."""
    codes = torch.zeros(mask.shape, dtype=torch.long, device=packed.device)
    codes[mask.to(packed.device)] = unpack_bits(packed, bits, int(mask.sum()))
    return codes


class SparseQuantFormat(QuantFormat):
    """:class:`~modelzip.quantize.layers.QuantFormat`'s codes and levels for the ``kept`` weights
    under a mask; pruned weights decode to exactly zero. Stored as the mask's bits, the packed
    kept codes and the levels."""

    mask: torch.Tensor

    def _init_format(
        self,
        weight_shape: tuple[int, ...],
        kept: int,
        bits: int,
        granularity: str = "channel",
        n_levels: int = 0,
    ) -> None:
        self.kept = int(kept)
        self._init_codes(weight_shape, self.kept, bits, granularity, 0, n_levels)
        self.register_buffer("mask", torch.zeros(self.weight_shape, dtype=torch.bool))

    def format_spec(self) -> dict[str, Any]:
        return {"kept": self.kept, "bits": self.weight_bits, "granularity": self.granularity,
                "n_levels": self.n_levels}  # fmt: skip

    def codes(self) -> torch.Tensor:
        """Codes shaped like the weight (0 where pruned)."""
        return scatter_codes(self.packed, self.mask, self.weight_bits)

    def decode_weight(self) -> torch.Tensor:
        w = super().decode_weight()
        return torch.where(self.mask, w, torch.zeros((), dtype=w.dtype, device=w.device))

    def weight_params(self) -> int:
        return self.kept

    def sparsity(self) -> float:
        return 1.0 - self.kept / math.prod(self.weight_shape)

    def packed_state(self) -> dict[str, torch.Tensor]:
        state = self.state_dict()
        return {"mask_bits": pack_mask(state.pop("mask")), **state}

    @torch.no_grad()
    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        mask = unpack_mask(state.pop("mask_bits"), self.weight_shape)
        if int(mask.sum()) != self.kept:
            raise ValueError(f"a mask of {int(mask.sum())} kept weights for kept={self.kept}")
        self.load_state_dict({**state, "mask": mask})


@register_layer
class SparseQuantLinear(SparseQuantFormat, CompressedLinear):
    """``nn.Linear`` with a pruning mask and ``bits``-bit codes for the kept weights."""


@register_layer
class SparseQuantConv2d(SparseQuantFormat, CompressedConv2d):
    """``nn.Conv2d`` with a pruning mask and ``bits``-bit codes for the kept weights."""


def sparse_quantized_layer(
    module: nn.Module, cfg: QuantizerConfig, generator: torch.Generator | None = None
) -> SparseQuantLinear | SparseQuantConv2d:
    """The pruning-aware quantized form of a masked layer (its mask) or of a plain
    ``Linear`` / ``Conv2d`` (its exact zeros are the pruned weights)."""
    masked = isinstance(module, _Masked)
    source = module.to_dense() if masked else module
    weight = getattr(source, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise SkipLayer(f"{type(module).__name__} has no pruning-aware quantized form")
    mask = module.mask.detach().clone() if masked else weight.detach() != 0
    layer = plain_like(
        source, SparseQuantLinear, SparseQuantConv2d, "pruning-aware quantization",
        kept=int(mask.sum()), bits=cfg.bits, granularity=cfg.granularity, n_levels=_n_levels(cfg),
    )  # fmt: skip
    require_float32(source)
    q = quantize_kept(weight.detach(), mask, cfg, generator)
    layer.mask.copy_(mask)
    layer._store(q.kept_codes, q.scale, q.offset, q.levels)
    return layer


@dataclasses.dataclass(frozen=True)
class SparseQuantizeConfig(QuantizerChoices, MethodConfig):
    """Pruning-aware weight quantization: the quantizer is fitted on the kept weights only and
    pruned weights stay exactly zero, so the sparsity pattern survives quantization.

    Applies to pruned layers (``MaskedLinear`` / ``MaskedConv2d``, also those of
    ``quant_aware_prune``), and to plain ``Linear`` / ``Conv2d`` whose exact zeros count as
    pruned. Fields as in :class:`~modelzip.quantize.quantizer.QuantizerConfig`; granularity is
    ``tensor`` or ``channel``.
    """

    method = "sparse_quantize"
    bits: int = 4
    granularity: Literal["tensor", "channel"] = "channel"

    def quantizer(self) -> QuantizerConfig:
        return QuantizerConfig.of(self)

    def validate(self) -> None:
        check_choice(self, "granularity", ("tensor", "channel"))
        self.quantizer()


def kept_quantize_weights(config: MethodConfig) -> SparseQuantizeConfig:
    """The ``sparse_quantize`` config that carries out a ``quantize_weights`` step on a pruned
    layer: the same quantizer (per-group granularity becomes per channel) on the kept weights."""
    fields = ("bits", "levels", "formulation", "range", "percentile", "rounding")
    granularity = getattr(config, "granularity", "channel")
    return SparseQuantizeConfig(
        **{f: getattr(config, f) for f in fields},
        granularity=granularity if granularity in ("tensor", "channel") else "channel",
        select=config.select,
    )


@register_method(
    SparseQuantizeConfig,
    family="joint",
    example=SparseQuantizeConfig(bits=4),
    composition=Composition(
        takes={"dense", "parts", "kept"},
        gives="codes",
        why={"codes": "the weights are already quantized codes"},
    ),
    kept_form_of={"quantize_weights": kept_quantize_weights},
)
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
