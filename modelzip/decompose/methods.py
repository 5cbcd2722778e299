"""Registered handlers of the decomposition family: one selected layer in, its decomposed form out.

A layer a method cannot handle (a grouped conv, an LSTM with projections) is skipped with the
reason; an invalid rank for a layer raises :class:`~modelzip.core.errors.ModelError` naming the
layer and the allowed range.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from modelzip.core.composition import RESTRUCTURES
from modelzip.core.config import MethodConfig
from modelzip.core.context import Context, layer_name
from modelzip.core.errors import ModelError
from modelzip.core.registry import Knob, SkipLayer, register_method
from modelzip.decompose.configs import (
    CPConfig,
    HTConfig,
    RNNHTConfig,
    RNNLowRankConfig,
    RNNTTConfig,
    SpatialConfig,
    SVDConfig,
    TTConfig,
    Tucker2Config,
    TuckerTensorizedConfig,
)
from modelzip.decompose.cp import CPConv2d
from modelzip.decompose.ht import HTLinear
from modelzip.decompose.lowrank import ChannelLowRankConv2d, LowRankLinear, SpatialLowRankConv2d
from modelzip.decompose.recurrent import DecomposedRNN
from modelzip.decompose.tt import TTConv2d, TTLinear
from modelzip.decompose.tt_embedding import TTEmbedding
from modelzip.decompose.tucker import Tucker2Conv2d, TuckerLinear

FULL = 1_000_000  # a rank above every useful rank: capped to exact decompositions
#: The knob of the matrix and conv decompositions that take a fraction of the full rank.
RANK_FRACTIONS = Knob("rank_fraction", (0.1, 0.2, 0.35, 0.5, 0.75))


def _decomposer(
    example: MethodConfig, noop: MethodConfig, knob: Knob | None = None, restructures: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Registers a handler of the ``decompose`` family for ``example``'s config type; one that
    ``restructures`` the layer (not the recurrent ones) declares :data:`RESTRUCTURES`."""
    return register_method(
        type(example),
        family="decompose",
        example=example,
        noop=noop,
        knob=knob,
        composition=RESTRUCTURES if restructures else None,
    )


def _apply(module: nn.Module, ctx: Context, build: Callable[[], nn.Module]) -> nn.Module:
    try:
        return build()
    except ModelError as e:
        raise ModelError(f"layer {layer_name(module, ctx)!r}: {e}") from None


def _dispatch(module: nn.Module, config: Any, ctx: Context, table: dict[type, Any]) -> nn.Module:
    for dense_type, layer_type in table.items():
        if type(module) is dense_type:
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise SkipLayer(f"grouped convolution (groups={module.groups})")
            return _apply(module, ctx, lambda cls=layer_type: cls.from_dense(module, config))
    raise SkipLayer(f"{type(module).__name__} has no {config.method} form")


@_decomposer(SVDConfig(rank_fraction=0.5), noop=SVDConfig(energy=1.0), knob=RANK_FRACTIONS)
def svd(module: nn.Module, config: SVDConfig, ctx: Context) -> nn.Module:
    """Truncated SVD of Linear weights and channel decomposition of conv kernels."""
    return _dispatch(
        module, config, ctx, {nn.Linear: LowRankLinear, nn.Conv2d: ChannelLowRankConv2d}
    )


@_decomposer(SpatialConfig(rank_fraction=0.5), noop=SpatialConfig(energy=1.0), knob=RANK_FRACTIONS)
def lowrank_spatial(module: nn.Module, config: SpatialConfig, ctx: Context) -> nn.Module:
    """Jaderberg et al. 2014 spatial decomposition: kh×1 conv then 1×kw conv."""
    return _dispatch(module, config, ctx, {nn.Conv2d: SpatialLowRankConv2d})


@_decomposer(Tucker2Config(rank_fraction=0.5), noop=Tucker2Config(energy=1.0), knob=RANK_FRACTIONS)
def tucker2(module: nn.Module, config: Tucker2Config, ctx: Context) -> nn.Module:
    """Tucker-2 conv of Kim et al. 2016: 1×1 → k×k core → 1×1."""
    return _dispatch(module, config, ctx, {nn.Conv2d: Tucker2Conv2d})


@_decomposer(
    CPConfig(rank_fraction=0.25, n_iter_max=25), noop=CPConfig(rank=FULL), knob=RANK_FRACTIONS
)
def cp(module: nn.Module, config: CPConfig, ctx: Context) -> nn.Module:
    """CP conv of Lebedev et al. 2015: 1×1 → depthwise k×1 → depthwise 1×k → 1×1."""
    return _dispatch(module, config, ctx, {nn.Conv2d: CPConv2d})


@_decomposer(TTConfig(rank=8), noop=TTConfig(rank=FULL))
def tt(module: nn.Module, config: TTConfig, ctx: Context) -> nn.Module:
    """Tensor train: TT-linear (Novikov 2015), TT-conv (Garipov 2016), TT embedding."""
    table = {nn.Linear: TTLinear, nn.Conv2d: TTConv2d, nn.Embedding: TTEmbedding}
    if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.sparse):
        raise SkipLayer("an Embedding with max_norm or sparse gradients")
    return _dispatch(module, config, ctx, table)


@_decomposer(HTConfig(rank=8), noop=HTConfig(rank=FULL))
def ht(module: nn.Module, config: HTConfig, ctx: Context) -> nn.Module:
    """Hierarchical Tucker linear layer (balanced or TT dimension tree)."""
    return _dispatch(module, config, ctx, {nn.Linear: HTLinear})


@_decomposer(TuckerTensorizedConfig(rank=8), noop=TuckerTensorizedConfig(rank=FULL))
def tucker_tensorized(module: nn.Module, config: TuckerTensorizedConfig, ctx: Context) -> nn.Module:
    """Tensorized Tucker linear layer: W reshaped to m₁n₁ × … × m_dn_d, Tucker-decomposed."""
    return _dispatch(module, config, ctx, {nn.Linear: TuckerLinear})


def _recurrent(module: nn.Module, config: Any, ctx: Context, linear_cls: type) -> nn.Module:
    if not isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        raise SkipLayer(f"{type(module).__name__} is not an LSTM, GRU or RNN")
    if getattr(module, "proj_size", 0):
        raise SkipLayer("an LSTM with proj_size > 0")
    return _apply(
        module, ctx, lambda: DecomposedRNN.from_dense(module, config, linear_cls=linear_cls)
    )


@_decomposer(
    RNNLowRankConfig(rank_fraction=0.5), noop=RNNLowRankConfig(energy=1.0), restructures=False
)
def rnn_lowrank(module: nn.Module, config: RNNLowRankConfig, ctx: Context) -> nn.Module:
    """Low-rank input-to-hidden and hidden-to-hidden matrices of LSTM / GRU / RNN layers."""
    return _recurrent(module, config, ctx, LowRankLinear)


@_decomposer(RNNTTConfig(rank=4), noop=RNNTTConfig(rank=FULL), restructures=False)
def rnn_tt(module: nn.Module, config: RNNTTConfig, ctx: Context) -> nn.Module:
    """TT input-to-hidden and hidden-to-hidden matrices of LSTM / GRU / RNN layers."""
    return _recurrent(module, config, ctx, TTLinear)


@_decomposer(RNNHTConfig(rank=4), noop=RNNHTConfig(rank=FULL), restructures=False)
def rnn_ht(module: nn.Module, config: RNNHTConfig, ctx: Context) -> nn.Module:
    """HT input-to-hidden and hidden-to-hidden matrices of LSTM / GRU / RNN layers."""
    return _recurrent(module, config, ctx, HTLinear)
