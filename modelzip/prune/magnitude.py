"""Unstructured magnitude pruning (Han et al., "Learning both Weights and Connections", 2015).

In each selected layer the ``round(sparsity · n)`` weights of smallest magnitude are removed, so
the layer reaches its target sparsity exactly (ties broken by position, deterministically).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from modelzip.core.composition import PRUNES
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.registry import Knob, SkipLayer, register_method
from modelzip.prune.masked import MaskedConv2d, MaskedLinear, _Masked
from modelzip.prune.masked_rnn import MaskedRNN, Prunable


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the ``n - round(sparsity·n)`` largest-magnitude weights."""
    n = weight.numel()
    n_pruned = round(sparsity * n)
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if n_pruned:
        # A stable sort makes the choice among equal magnitudes deterministic.
        order = torch.sort(weight.detach().abs().reshape(-1), stable=True).indices
        mask[order[:n_pruned]] = False
    return mask.reshape(weight.shape)


_MASKED = {nn.Linear: MaskedLinear, nn.Conv2d: MaskedConv2d}


def as_masked(module: nn.Module) -> _Masked:
    """The masked form of a ``Linear``/``Conv2d`` (the layer itself if already masked)."""
    if isinstance(module, _Masked):
        return module
    if isinstance(module, (nn.RNNBase, MaskedRNN)):
        raise SkipLayer(
            f"a {getattr(module, 'stands_for', '') or type(module).__name__}'s masked form takes "
            "element-wise pruning only (magnitude_prune, global_prune)"
        )
    # A subclass that keeps its base's forward (MultiheadAttention's out_proj, a
    # NonDynamicallyQuantizableLinear) computes what its base does; one that overrides it does not.
    base = next((b for b in type(module).__mro__ if b in _MASKED), None)
    if base is not None and type(module).forward is base.forward:
        try:
            return _MASKED[base].from_dense(module)
        except ValueError as e:
            raise SkipLayer(str(e)) from None
    from modelzip.core.module import CompressedModule

    if isinstance(module, CompressedModule):
        raise SkipLayer(
            f"already compressed as {type(module).__name__}; the factors of a decomposed layer "
            "are pruned by the decompose_prune method"
        )
    raise SkipLayer(f"{type(module).__name__} has no masked form")


def as_prunable(module: nn.Module) -> Prunable:
    """The element-wise masked form of a ``Linear``/``Conv2d``/``LSTM``/``GRU``/``RNN`` (the layer
    itself if already masked)."""
    if isinstance(module, MaskedRNN):
        return module
    # Only the torch classes themselves: a subclass may compute something else in its forward.
    if type(module) in (nn.LSTM, nn.GRU, nn.RNN):
        return MaskedRNN.from_dense(module)
    return as_masked(module)


@dataclasses.dataclass(frozen=True)
class MagnitudePruneConfig(MethodConfig):
    """Remove the smallest-magnitude weights of each selected layer (each weight matrix of a
    selected ``LSTM``/``GRU``/``RNN``, its biases kept).

    Parameters
    ----------
    sparsity:
        Fraction of the layer's weights to remove, in [0, 1).
    """

    method = "magnitude_prune"
    default_types: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d", "Embedding")
    embeddings_as_tables: ClassVar[bool] = True
    sparsity: float = 0.9

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)


@register_method(
    MagnitudePruneConfig,
    family="prune",
    example=MagnitudePruneConfig(sparsity=0.9),
    noop=MagnitudePruneConfig(sparsity=0.0),
    knob=Knob("sparsity", (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)),
    composition=PRUNES,
)
def magnitude_prune(module: nn.Module, config: MagnitudePruneConfig, ctx: Context) -> nn.Module:
    """Unstructured magnitude pruning to an exact per-layer sparsity (Han et al. 2015)."""
    layer = as_prunable(module)
    # Already-pruned weights count as the smallest, so pruning again only adds to the mask
    # (each weight matrix of a recurrent layer reaches the sparsity on its own).
    layer.prune_with(magnitude_mask, config.sparsity)
    return layer
