"""Registered weight-pruning methods beyond element-wise magnitude: N:M, blocks, vectors, Han's
quality × std threshold. Each replaces a ``Linear``/``Conv2d`` by its masked form."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from modelzip.core.composition import PRUNES
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.errors import ConfigError
from modelzip.core.registry import SkipLayer, register_method
from modelzip.prune.grains import block_mask, kernel_mask, nm_mask, vector_mask
from modelzip.prune.magnitude import as_masked
from modelzip.prune.masked import MaskedConv2d


def _apply(module: nn.Module, mask_of) -> nn.Module:
    layer = as_masked(module)
    try:
        mask = mask_of(layer.masked_weight())
    except ValueError as e:
        raise SkipLayer(str(e)) from None
    # Already-pruned weights stay pruned: a second method only adds to the mask.
    layer.set_mask(mask & layer.mask)
    return layer


@dataclasses.dataclass(frozen=True)
class NMPruneConfig(MethodConfig):
    """N:M fine-grained structured sparsity: at most ``n`` nonzeros in every ``m`` consecutive
    weights along each row's inputs (2:4 is the pattern of sparse tensor cores, Mishra et al.,
    "Accelerating Sparse Deep Neural Networks", 2021). Sparsity is ``1 - n/m``.

    Parameters
    ----------
    n:
        Weights kept per group, in [0, m].
    m:
        Group length; layers whose ``fan_in`` it does not divide are skipped with the reason.
    """

    method = "nm_prune"
    n: int = 2
    m: int = 4

    def validate(self) -> None:
        check_range(self, "m", 1)
        check_range(self, "n", 0)
        if self.n > self.m:
            raise ConfigError(f"NMPruneConfig.n={self.n} is out of range; allowed [0, m={self.m}]")


@register_method(NMPruneConfig, family="prune", noop=NMPruneConfig(n=4, m=4), composition=PRUNES)
def nm_prune(module: nn.Module, config: NMPruneConfig, ctx: Context) -> nn.Module:
    """N:M structured sparsity (2:4) by magnitude within each group."""
    return _apply(module, lambda w: nm_mask(w, config.n, config.m))


@dataclasses.dataclass(frozen=True)
class BlockPruneConfig(MethodConfig):
    """Remove whole blocks of the ``(out, fan_in)`` weight matrix, those of smallest norm.

    Parameters
    ----------
    sparsity:
        Fraction of blocks removed, in [0, 1).
    block:
        ``(rows, columns)`` of a block; it must divide the matrix (other layers are skipped).
    grain:
        ``"block"`` for ``block``-shaped tiles, ``"kernel"`` for the ``kh × kw`` kernels of convs.
    norm:
        ``"l1"`` or ``"l2"`` norm of a block as its importance.
    """

    method = "block_prune"
    sparsity: float = 0.75
    block: tuple[int, int] = (4, 4)
    grain: Literal["block", "kernel"] = "block"
    norm: Literal["l1", "l2"] = "l2"

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)
        if min(self.block) < 1:
            raise ConfigError(f"BlockPruneConfig.block={self.block!r} must be positive sizes")


@register_method(
    BlockPruneConfig, family="prune", noop=BlockPruneConfig(sparsity=0.0), composition=PRUNES
)
def block_prune(module: nn.Module, config: BlockPruneConfig, ctx: Context) -> nn.Module:
    """Block-wise (b×b tiles) or kernel-wise pruning by block norm."""
    if config.grain == "kernel":
        if not isinstance(module, (nn.Conv2d, MaskedConv2d)):
            raise SkipLayer("kernel-wise pruning applies to convolutions only")
        return _apply(module, lambda w: kernel_mask(w, config.sparsity, config.norm))
    return _apply(module, lambda w: block_mask(w, config.sparsity, config.block, config.norm))


@dataclasses.dataclass(frozen=True)
class VectorPruneConfig(MethodConfig):
    """Remove whole rows (all weights of one output / conv filter) or columns (all weights from
    one input) of the ``(out, fan_in)`` weight matrix, by norm. The layer keeps its shape; for
    real removal of channels see ``channel_prune``.

    Parameters
    ----------
    sparsity:
        Fraction of rows (columns) removed, in [0, 1).
    axis:
        ``"row"`` or ``"column"``.
    norm:
        ``"l1"`` or ``"l2"``.
    """

    method = "vector_prune"
    sparsity: float = 0.5
    axis: Literal["row", "column"] = "row"
    norm: Literal["l1", "l2"] = "l2"

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)


@register_method(
    VectorPruneConfig, family="prune", noop=VectorPruneConfig(sparsity=0.0), composition=PRUNES
)
def vector_prune(module: nn.Module, config: VectorPruneConfig, ctx: Context) -> nn.Module:
    """Row- or column-wise pruning by vector norm."""
    return _apply(module, lambda w: vector_mask(w, config.sparsity, config.axis, config.norm))


def han_threshold_mask(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """Han et al. (2015): keep ``|w| > quality · std(w)`` (std over the layer's weights)."""
    w = weight.detach()
    # One weight has no sample std (NaN would prune it whatever its size; tests/reliability).
    std = w.float().std() if w.numel() > 1 else w.new_zeros((), dtype=torch.float32)
    return w.abs() > quality * std.to(w.dtype)


@dataclasses.dataclass(frozen=True)
class ThresholdPruneConfig(MethodConfig):
    """Han et al., "Learning both Weights and Connections" (2015): remove the weights with
    ``|w| ≤ quality × std(W)``, a per-layer threshold scaled by the spread of the layer's weights.

    Parameters
    ----------
    quality:
        The quality parameter, >= 0; for Gaussian weights ``q`` removes about ``erf(q/√2)``.
    """

    method = "threshold_prune"
    quality: float = 1.0

    def validate(self) -> None:
        check_range(self, "quality", 0.0)


@register_method(
    ThresholdPruneConfig,
    family="prune",
    example=ThresholdPruneConfig(quality=1.5),
    noop=ThresholdPruneConfig(quality=0.0),
    composition=PRUNES,
)
def threshold_prune(module: nn.Module, config: ThresholdPruneConfig, ctx: Context) -> nn.Module:
    """Han et al.'s threshold: prune |w| <= quality × std of the layer."""
    return _apply(module, lambda w: han_threshold_mask(w, config.quality))
