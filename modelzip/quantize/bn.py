"""Batch normalization at inference: folding into the preceding layer, and quantized parameters.

At inference a BN layer is the per-channel affine map ``y = a·x + b`` with
``a = γ / sqrt(σ² + ε)`` and ``b = β − a·μ``. Following a convolution or linear layer
``x = W·u + c`` it folds into that layer exactly (Jacob et al. 2018, Section 3.2)::

    W' = a·W (row-wise),   c' = a·c + b
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import torch
from torch import nn

from modelzip.quantize.quantizer import QuantizerConfig, quantize

__all__ = ["bn_affine", "fold_bn", "fold_bn_into", "quantize_bn"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` of the BN layer's inference map ``a·x + b`` (running statistics)."""
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
    a = torch.rsqrt(var.float() + bn.eps)
    if bn.affine:
        a = a * bn.weight.detach().float()
    b = -a * mean.float()
    if bn.affine:
        b = b + bn.bias.detach().float()
    return a, b


@torch.no_grad()
def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``layer`` (``Linear`` or ``Conv2d``) computing ``bn(layer(x))`` at inference."""
    a, b = bn_affine(bn)
    weight = layer.weight.detach().float()
    new = copy.deepcopy(layer)
    new.weight.copy_(weight * a.reshape((-1,) + (1,) * (weight.dim() - 1)))
    bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros_like(a)
    new.bias = nn.Parameter((a * bias + b).to(layer.weight))
    return new


def fold_bn(
    model: nn.Module,
    *,
    sequential_only: bool = False,
    accept: Callable[[str, nn.Module], bool] | None = None,
) -> list[tuple[str, str]]:
    """Fold every BN that directly follows a ``Linear`` or ``Conv2d`` in a container, in place.

    The BN is replaced by ``nn.Identity`` so that module names stay stable. Returns the
    ``(layer, bn)`` name pairs folded. Only consecutive children of one parent are paired: that
    is how sequential models (and the zoo's) are written; a BN used elsewhere is left alone.
    Definition order is the data flow only in ``nn.Sequential`` (``sequential_only`` keeps to
    those); the ``fold_bn`` recipe step checks other containers on a sample batch. ``accept``
    (full name, layer) chooses which layers may absorb their BN.
    """
    folded: list[tuple[str, str]] = []
    for parent_name, parent in model.named_modules():
        if sequential_only and not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (name, layer), (bn_name, bn) in itertools.pairwise(children):
            if type(layer) not in (nn.Linear, nn.Conv2d) or not isinstance(bn, _BN):
                continue
            if bn.num_features != layer.weight.shape[0] or (
                bn.training and bn.track_running_stats is False
            ):
                continue
            prefix = f"{parent_name}." if parent_name else ""
            if accept is not None and not accept(prefix + name, layer):
                continue
            setattr(parent, name, fold_bn_into(layer, bn))
            setattr(parent, bn_name, nn.Identity())
            folded.append((prefix + name, prefix + bn_name))
    return folded


@torch.no_grad()
def quantize_bn(
    bn: nn.modules.batchnorm._BatchNorm, bits: int = 8
) -> nn.modules.batchnorm._BatchNorm:
    """A BN whose inference map uses ``bits``-bit multipliers ``a`` and offsets ``b``.

    The returned layer has ``γ = Q(a)``, ``β = Q(b)``, ``μ = 0``, ``σ² = 1 − ε`` (so it computes
    ``Q(a)·x + Q(b)``), each quantized symmetric per tensor.
    """
    a, b = bn_affine(bn)
    cfg = QuantizerConfig(bits=bits, granularity="tensor")
    new = type(bn)(bn.num_features, eps=bn.eps, affine=True).to(a.device)
    new.weight.copy_(quantize(a, cfg)[1])
    new.bias.copy_(quantize(b, cfg)[1])
    new.running_mean.zero_()
    new.running_var.fill_(1 - bn.eps)
    return new.eval()
