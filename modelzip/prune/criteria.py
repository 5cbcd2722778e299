"""How important is a channel: magnitude (L1, L2), BatchNorm scale, first-order Taylor, random.

Scores are per channel of a group (see :mod:`modelzip.prune.dependency`), summed over the
group's producers, so that coupled layers (a residual add group) are ranked together.

* ``l1``/``l2``: the norm of each producer's filter (Li et al., "Pruning Filters for Efficient
  ConvNets", ICLR 2017).
* ``bn``: ``|γ|`` of the BatchNorm that follows (Liu et al., "Learning Efficient Convolutional
  Networks through Network Slimming", ICCV 2017); train with :func:`bn_sparsity` first so that
  the penalty ``λ Σ|γ|`` drives unimportant scales to zero.
* ``taylor``: ``|Σ_{h,w} a · ∂L/∂a|`` of each output map, averaged over samples (Molchanov et al.,
  "Pruning Convolutional Neural Networks for Resource Efficient Inference", ICLR 2017): the
  first-order change of the loss when the channel is zeroed.
* ``random``: a baseline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.data.folder import as_tensor, is_images
from modelzip.prune.dependency import ChannelGraph
from modelzip.prune.grains import group_norms

Criterion = Literal["l1", "l2", "bn", "taylor", "random"]


def _norm_scores(model: nn.Module, graph: ChannelGraph, norm: str) -> dict[int, torch.Tensor]:
    scores = {}
    for root, names in graph.producers.items():
        total = None
        for name in names:
            w = model.get_submodule(name).weight
            s = group_norms(w.reshape(w.shape[0], -1), norm)  # type: ignore[arg-type]
            total = s if total is None else total + s
        scores[root] = total
    return scores


def _taylor_scores(
    model: nn.Module, graph: ChannelGraph, data: Any, batches: int, batch_size: int = 64
) -> dict[int, torch.Tensor]:
    x_all, y_all = getattr(data, "x_train", None), getattr(data, "y_train", None)
    if not is_images(x_all) or not isinstance(y_all, torch.Tensor):
        raise ModelError("the Taylor criterion needs labelled image data: pass data to compress")
    device = next(model.parameters()).device
    acc: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name: str):
        def fwd(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            def bwd(grad: torch.Tensor) -> None:
                prod = out.detach() * grad
                if isinstance(_m, nn.Linear) and prod.dim() > 2:  # channels last: (N, ..., C)
                    per = prod.flatten(1, -2).sum(1)
                else:
                    per = prod.flatten(2).sum(-1) if prod.dim() > 2 else prod
                acc[name] = acc.get(name, 0) + per.abs().sum(0)

            out.register_hook(bwd)

        return fwd

    for names in graph.producers.values():
        for name in names:
            hooks.append(model.get_submodule(name).register_forward_hook(hook(name)))
    saved = {n: p.grad for n, p in model.named_parameters()}
    was_training = model.training
    model.eval()  # running BN statistics: the scores are about the deployed model
    try:
        with torch.enable_grad():
            for b in range(batches):
                sl = slice(b * batch_size, (b + 1) * batch_size)
                x, y = as_tensor(x_all[sl]).to(device), y_all[sl].to(device)
                if not len(x):
                    break
                F.cross_entropy(model(x), y).backward()
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.grad = saved[n]
        model.train(was_training)
    return {root: sum(acc[n] for n in names) for root, names in graph.producers.items()}


def channel_scores(
    model: nn.Module,
    graph: ChannelGraph,
    criterion: Criterion,
    *,
    data: Any = None,
    generator: torch.Generator | None = None,
    batches: int = 4,
) -> dict[int, torch.Tensor]:
    """Importance of every channel of every prunable group (higher: keep)."""
    if criterion in ("l1", "l2"):
        return _norm_scores(model, graph, criterion)
    if criterion == "taylor":
        return _taylor_scores(model, graph, data, batches)
    if criterion == "random":
        return {r: torch.rand(c, generator=generator) for r, c in graph.groups.items()}
    if criterion == "bn":
        scores = _norm_scores(model, graph, "l2")  # groups without a BatchNorm fall back to L2
        for root in graph.groups:
            bns = graph.bn_of(root)
            if bns:
                scores[root] = sum(model.get_submodule(n).weight.detach().abs() for n in bns)
        return scores
    raise ValueError(f"criterion={criterion!r} is not allowed; choose l1, l2, bn, taylor, random")


@contextlib.contextmanager
def bn_sparsity(model: nn.Module, penalty: float = 1e-4) -> Iterator[None]:
    """Network slimming's sparsity training: while active, every BatchNorm scale's gradient gets
    ``λ·sign(γ)`` added (the subgradient of ``λ Σ|γ|``), so training pushes scales to zero.

    >>> with bn_sparsity(model, 1e-4):
    ...     train(model, data, config)
    """
    handles = []
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.weight is not None:
            w = m.weight
            handles.append(w.register_hook(lambda g, w=w: g + penalty * torch.sign(w.detach())))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
