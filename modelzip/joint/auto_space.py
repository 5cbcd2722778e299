"""The per-layer search space of automatic compression: each analysed layer's options that lower
the budget's cost, with the cost each removes and the accuracy it is predicted to lose; a latency
budget times each option on the layer's own input, beside the dense layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from modelzip.joint.search import Option, SearchSpace
from modelzip.joint.sensitivity import (
    SensitivityResult,
    analysed_layers,
    compress_one,
    layer_config,
)

if TYPE_CHECKING:
    from modelzip.joint.auto_run import AutoRun

#: A layer timed less than this fraction faster than its dense form is not counted as faster:
#: on a shared CPU, repeated medians of the same layer differ by a few percent.
_TIMER_NOISE = 0.05


def layer_space(run: AutoRun, sensitivity: SensitivityResult | None) -> SearchSpace:
    """Options of each layer of ``run``'s model with a positive predicted cost reduction."""
    pairs = analysed_layers(run.model, run.config.sensitivity)
    layers = list(dict.fromkeys(layer for layer, _ in pairs))
    if run.budget.kind == "latency":
        costs, base = _layer_latencies(run, pairs), None
    else:
        costs, base = _option_costs(run, pairs, lambda _, small: run.cost(small)), run.base_cost
    options, reduction, loss = [], [], []
    for layer in layers:
        opts, red, lost = [Option()], [0.0], [0.0]
        for lyr, method in pairs:
            if lyr != layer:
                continue
            curve = sensitivity.curve(layer, method) if sensitivity else None
            for k, value in enumerate(run.config.sensitivity.values(method)):
                key = (layer, method, value)
                if key not in costs:
                    continue
                if base is None:  # timed layers: a gain within timer noise is no gain
                    dense, new = costs[key]
                    gain = dense - new if new < (1 - _TIMER_NOISE) * dense else 0.0
                else:
                    gain = base - costs[key]
                if gain <= 0:
                    continue  # never lowers this budget's cost: not worth its accuracy
                opts.append(Option(method, value))
                red.append(gain)
                lost.append(max(run.base_accuracy - curve.accuracy[k], 0.0) if curve else 0.0)
        options.append(opts)
        reduction.append(red)
        loss.append(lost)
    return SearchSpace(layers, options, reduction, loss, run.base_cost)


def _option_costs(
    run: AutoRun, pairs: list[tuple[str, str]], cost: Callable[[str, nn.Module], Any]
) -> dict[tuple[str, str, float], Any]:
    """``(layer, method, value) -> cost(layer, the model with only that option applied)`` for
    the options that change their layer and that ``cost`` costs (not None)."""
    costs = {}
    for layer, method in pairs:
        for value in run.config.sensitivity.values(method):
            small = compress_one(run.model, layer_config(method, value, layer))
            if small is not None and (c := cost(layer, small)) is not None:
                costs[(layer, method, value)] = c
    return costs


def _layer_latencies(run: AutoRun, pairs: list[tuple[str, str]]) -> dict[Any, Any]:
    """``(layer, method, value) -> (dense layer ms, compressed layer ms)`` on the layer's
    own recorded input, the two timed side by side."""
    from modelzip.core.running import run_hooked
    from modelzip.core.timing import time_interleaved

    inputs: dict[str, tuple[Any, ...]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            inputs.setdefault(name, args)

        return hook

    names = dict.fromkeys(layer for layer, _ in pairs)
    hooks = [(run.model.get_submodule(n), record(n)) for n in names]
    run_hooked(run.model, run.sample, hooks)

    def side_by_side(layer: str, small: nn.Module) -> tuple[float, float] | None:
        if layer not in inputs:
            return None
        dense, new = run.model.get_submodule(layer), small.get_submodule(layer)
        # Interleaved, so that load from other processes slows both layers alike; medians
        # of at least 0.4 s of calls (20 to 200 rounds), the first calls left out.
        a, b = time_interleaved([dense, new.eval()], inputs[layer], reps=20, warmup=3,
                                min_seconds=0.4, max_reps=200, grad="inference")  # fmt: skip
        return a.ms, b.ms

    return _option_costs(run, pairs, side_by_side)
