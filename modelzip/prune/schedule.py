"""When and how much to prune: one-shot, iterative prune-and-retrain, gradual (AGP), and
layer-wise or global thresholds.

* **One-shot**: prune once to the target (``compress`` with any prune method), optionally
  fine-tune.
* **Iterative** (Han et al., "Learning both Weights and Connections", NeurIPS 2015): alternate
  pruning to a growing sparsity and retraining; :func:`iterative_prune`.
* **Gradual** (Zhu & Gupta, "To prune, or not to prune", 2017): inside one training run the
  sparsity follows the cubic schedule

  .. math:: s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{n\\,\\Delta t}\\right)^3,

  raised every :math:`\\Delta t` steps from :math:`t_0` for :math:`n` updates;
  :class:`AGPCallback` is a ``train`` callback.
* **Layer-wise vs global**: every layer to the same sparsity, or one magnitude threshold over all
  selected layers (so layers with many small weights lose more); ``global_prune``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from modelzip.core.changes import LayerSize
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.registry import SkipLayer, register_method
from modelzip.prune.grains import keep_top
from modelzip.prune.magnitude import as_prunable, magnitude_mask
from modelzip.prune.masked_rnn import PRUNABLE, Prunable

MaskFn = Callable[[torch.Tensor, float], torch.Tensor]


def agp_sparsity(
    step: int, final: float, begin: int, end: int, initial: float = 0.0, frequency: int = 1
) -> float:
    """Zhu & Gupta's cubic sparsity at ``step``: ``initial`` before ``begin``, ``final`` after
    ``end``, rising fast first and slowly at the end (updated every ``frequency`` steps)."""
    if step < begin:
        return initial if step >= 0 else 0.0
    if step >= end or end <= begin:
        return final
    t = ((step - begin) // frequency) * frequency
    return final + (initial - final) * (1.0 - t / (end - begin)) ** 3


def masked_layers(model: nn.Module) -> dict[str, Prunable]:
    """The masked layers of ``model`` by name (recurrent ones included)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}


@torch.no_grad()
def prune_layers(
    layers: Mapping[str, Prunable],
    sparsity: float | Mapping[str, float],
    scope: Literal["layer", "global"] = "layer",
    mask_fn: MaskFn = magnitude_mask,
) -> None:
    """Prune masked layers to ``sparsity`` (one value, or one per layer name), in place.

    ``scope="global"`` ranks the magnitudes of all layers together (one threshold); masks only
    grow, so pruned weights stay pruned.
    """
    if scope == "global":
        if not isinstance(sparsity, (int, float)):
            raise ValueError("a global threshold takes one sparsity, not one per layer")
        weights = [m.masked_weight().detach().abs().reshape(-1) for m in layers.values()]
        if not weights:
            return
        keep = keep_top(torch.cat([w.to(weights[0].device) for w in weights]), float(sparsity))
        offset = 0
        for layer, w in zip(layers.values(), weights, strict=True):
            part = keep[offset : offset + w.numel()].reshape(layer.mask.shape)
            layer.set_mask(part.to(layer.mask.device) & layer.mask)
            offset += w.numel()
        return
    for name, layer in layers.items():
        s = sparsity if isinstance(sparsity, (int, float)) else sparsity.get(name)
        if s is None:
            continue
        layer.prune_with(mask_fn, float(s))


class AGPCallback:
    """A :func:`modelzip.train.train` callback that prunes gradually on the cubic schedule.

    Parameters
    ----------
    final_sparsity:
        Sparsity reached at ``end_step`` (one value, or one per layer name).
    begin_step, end_step:
        The steps at which pruning starts and reaches its final value.
    frequency:
        Steps between two mask updates (Zhu & Gupta used 100–1000).
    scope:
        ``"layer"`` (each layer to the schedule's sparsity) or ``"global"`` (one threshold).
    mask_fn:
        The grain: ``mask_fn(weight, sparsity) -> keep``; element-wise magnitude by default
        (e.g. ``lambda w, s: block_mask(w, s, (4, 4))`` for blocks).
    """

    def __init__(
        self,
        final_sparsity: float | Mapping[str, float],
        begin_step: int,
        end_step: int,
        frequency: int = 100,
        initial_sparsity: float = 0.0,
        scope: Literal["layer", "global"] = "layer",
        mask_fn: MaskFn = magnitude_mask,
    ) -> None:
        if frequency < 1 or end_step < begin_step:
            raise ValueError(
                f"need frequency >= 1 and end_step >= begin_step, got {frequency}, "
                f"{begin_step}..{end_step}"
            )
        self.final, self.begin, self.end = final_sparsity, begin_step, end_step
        self.frequency, self.initial, self.scope, self.mask_fn = (
            frequency,
            initial_sparsity,
            scope,
            mask_fn,
        )
        self.history: list[tuple[int, float]] = []

    def sparsity_at(self, step: int, final: float) -> float:
        return agp_sparsity(step, final, self.begin, self.end, self.initial, self.frequency)

    def __call__(self, model: nn.Module, step: int, epoch: int) -> None:
        if step < self.begin or step > self.end + self.frequency:
            return
        if (step - self.begin) % self.frequency and step != self.end:
            return
        layers = masked_layers(model)
        if isinstance(self.final, Mapping):
            target: float | dict[str, float] = {
                n: self.sparsity_at(step, s) for n, s in self.final.items()
            }
            self.history.append((step, max(target.values(), default=0.0)))
        else:
            target = self.sparsity_at(step, self.final)
            self.history.append((step, target))
        prune_layers(layers, target, self.scope, self.mask_fn)


def iterative_prune(
    model: nn.Module,
    data: Any,
    schedule: Sequence[float | Mapping[str, float]],
    train_config: Any,
    scope: Literal["layer", "global"] = "layer",
    mask_fn: MaskFn = magnitude_mask,
    callback: Callable[[int, nn.Module], Any] | None = None,
) -> list[Any]:
    """Han et al.'s iterative pruning: for each sparsity of ``schedule``, prune then retrain.

    The model's selected layers must already be masked (e.g. ``compress`` with
    ``magnitude_prune(sparsity=0)``). Returns what ``callback(round, model)`` returned per round.
    """
    from modelzip.train import train

    results = []
    for i, target in enumerate(schedule):
        prune_layers(masked_layers(model), target, scope, mask_fn)
        train(model, data, train_config, progress=False)
        if callback is not None:
            results.append(callback(i, model))
    return results


@dataclasses.dataclass(frozen=True)
class GlobalPruneConfig(MethodConfig):
    """Magnitude pruning with one threshold over all selected layers (a global ranking), so the
    model as a whole reaches ``sparsity`` exactly; layers differ in what they keep.

    Parameters
    ----------
    sparsity:
        Fraction of all selected weights removed, in [0, 1).
    """

    method = "global_prune"
    sparsity: float = 0.9

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)


@register_method(
    GlobalPruneConfig, family="prune", scope="model", noop=GlobalPruneConfig(sparsity=0.0)
)
def global_prune(model: nn.Module, config: GlobalPruneConfig, ctx: Context) -> None:
    """Global magnitude pruning: one threshold across the selected layers."""
    layers: dict[str, Prunable] = {}
    already: dict[str, LayerSize] = {}  # layers masked before: pruned in place, measured first
    for name, module in list(config.select.select(model, config.default_types)):
        try:
            layer = as_prunable(module)
        except SkipLayer as e:
            ctx.skip(name, config.method, str(e))
            continue
        # Checked before ranking, so that a layer left alone takes no share of the threshold.
        reason = ctx.refusal(name, layer)
        if reason is not None:
            ctx.skip(name, config.method, reason)
            continue
        if layer is module:
            already[name] = LayerSize.of(module)
        layers[name] = layer
    prune_layers(layers, config.sparsity, "global")
    for name, layer in layers.items():
        note = f"sparsity {layer.sparsity():.3f}"
        if name in already:
            ctx.record(name, already[name], layer, method=config.method, note=note)
        else:  # a masked copy of the untouched dense layer
            ctx.replace(name, layer, method=config.method, note=note)
