"""Per-layer ranks from one global parameter budget.

One knob is shared by every selected layer — the energy kept (SVD-based methods) or the fraction
of parameters kept (CP, TT, HT) — and is set by bisection to the largest value whose decomposed
layers fit the budget. Layers whose spectrum decays fast thus get small ranks and the others
large ones, which is the energy criterion applied globally rather than per layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from modelzip.core.config import MethodConfig
from modelzip.core.errors import ConfigError, ModelError
from modelzip.core.registry import get_method
from modelzip.core.selection import Select
from modelzip.decompose.cp import cp_conv_params, cp_rank
from modelzip.decompose.factorized import modes_for
from modelzip.decompose.ht import dimension_tree, ht_params, ht_rank_request, ht_ranks
from modelzip.decompose.rank import rank_for_energy
from modelzip.decompose.tt import tt_params, tt_ranks
from modelzip.decompose.tucker import tucker2_params

# knob -> (config fields, parameters of the decomposed layer)
Planner = Callable[[float], tuple[dict[str, Any], int]]


def _bias(module: nn.Module) -> int:
    b = getattr(module, "bias", None)
    return b.numel() if isinstance(b, torch.Tensor) else 0


def _svd_planner(matrix: torch.Tensor, extra: int, per_rank: int) -> Planner:
    s = torch.linalg.svdvals(matrix.detach().double())

    def plan(t: float) -> tuple[dict[str, Any], int]:
        r = rank_for_energy(s, t)
        return {"rank": r}, r * per_rank + extra

    return plan


def _planner(method: str, module: nn.Module, config: Any) -> Planner:
    W = getattr(module, "weight", None)
    bias = _bias(module)
    if method == "svd" and isinstance(module, (nn.Linear, nn.Conv2d)):
        matrix = W.reshape(W.shape[0], -1)
        return _svd_planner(matrix, bias, sum(matrix.shape) + (not config.fold_singular_values))
    if method == "lowrank_spatial" and isinstance(module, nn.Conv2d):
        O, I, kh, kw = W.shape
        return _svd_planner(W.permute(1, 2, 3, 0).reshape(I * kh, kw * O), bias, I * kh + kw * O)
    if method == "tucker2" and isinstance(module, nn.Conv2d):
        O, I, kh, kw = W.shape
        s0 = torch.linalg.svdvals(W.detach().double().reshape(O, -1))
        s1 = torch.linalg.svdvals(W.detach().double().transpose(0, 1).reshape(I, -1))

        def plan(t: float) -> tuple[dict[str, Any], int]:
            r = (rank_for_energy(s0, t), rank_for_energy(s1, t))
            return {"ranks": r}, tucker2_params(O, I, kh, kw, *r) + bias

        return plan
    if method == "cp" and isinstance(module, nn.Conv2d):
        O, I, kh, kw = W.shape

        def plan(t: float) -> tuple[dict[str, Any], int]:
            r = cp_rank(W, SimpleNamespace(rank_fraction=t))
            return {"rank": r}, cp_conv_params(O, I, kh, kw, r) + bias

        return plan
    if method == "tt" and isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
        kind = "Conv2d" if isinstance(module, nn.Conv2d) else "Linear"
        in_modes, out_modes = modes_for(W.shape[1], W.shape[0], config)
        spatial = [math.prod(W.shape[2:])] if kind == "Conv2d" else []  # a conv's kh·kw mode
        sizes = spatial + [a * b for a, b in zip(in_modes, out_modes, strict=False)]

        def plan(t: float) -> tuple[dict[str, Any], int]:
            ranks = tt_ranks(sizes, SimpleNamespace(rank_fraction=t), kind, W.numel())
            return {"ranks": tuple(ranks[1:-1])}, tt_params(sizes, ranks) + bias

        return plan
    if method == "ht" and isinstance(module, nn.Linear):
        in_modes, out_modes = modes_for(W.shape[1], W.shape[0], config)
        shape = [a * b for a, b in zip(in_modes, out_modes, strict=False)]
        tree = dimension_tree(len(shape), config.tree)

        def plan(t: float) -> tuple[dict[str, Any], int]:
            share = SimpleNamespace(rank_fraction=t)
            ranks = ht_ranks(shape, tree, ht_rank_request(shape, tree, share, W.numel()))
            return {"ranks": tuple(ranks[1:])}, ht_params(shape, tree, ranks) + bias

        return plan
    raise ModelError(f"allocate_ranks does not plan {method!r} for {type(module).__name__}")


def allocate_ranks(
    model: nn.Module,
    budget_params: int,
    method: str = "svd",
    select: Select | None = None,
    **fields: Any,
) -> dict[str, MethodConfig]:
    """Per-layer exact ranks so that the selected layers, decomposed, hold at most
    ``budget_params`` parameters (biases included).

    Parameters
    ----------
    model:
        The model; its layers are selected by ``select`` and the method's default types.
    budget_params:
        Parameters allowed for all selected layers together after decomposition.
    method:
        ``svd``, ``lowrank_spatial``, ``tucker2``, ``cp``, ``tt`` or ``ht``.
    **fields:
        Other fields of the method's config (``fold_singular_values``, ``d``, ``tree`` ...).

    Returns
    -------
    A config per layer name, with exact ranks and a ``select`` naming that layer only; apply them
    in turn (a recipe of one step per layer).
    """
    config_type = get_method(method).config_type
    base = config_type(**fields)
    layers = list((select or Select()).select(model, config_type.default_types))
    if not layers:
        raise ConfigError(f"allocate_ranks: no layer of the model is selected for {method!r}")
    planners = {name: _planner(method, module, base) for name, module in layers}

    def total(t: float) -> int:
        return sum(p(t)[1] for p in planners.values())

    lo, hi = 1e-9, 1.0
    if total(lo) > budget_params:
        raise ModelError(
            f"allocate_ranks: even the smallest ranks need {total(lo)} parameters; the budget "
            f"is {budget_params}"
        )
    if total(hi) <= budget_params:
        lo = hi
    else:
        for _ in range(50):
            mid = math.sqrt(lo * hi) if hi / lo > 4 else (lo + hi) / 2
            lo, hi = (mid, hi) if total(mid) <= budget_params else (lo, mid)
    out = {}
    for name, planner in planners.items():
        chosen, _ = planner(lo)
        kwargs = {**fields, **chosen}
        out[name] = config_type(**kwargs, select=Select(names=(re.escape(name),)))
    return out
