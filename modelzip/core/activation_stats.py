"""Measured activation statistics: one forward pass records what the hardware model cannot guess.

:func:`collect_workloads` describes a layer by its shapes and weights; how many of its input
activations are zero, how many of its outputs the following ReLU zeroes, how many bits its
activations have after quantization and how many outputs a before-calculation predictor skipped
are properties of the data. :func:`measure_activations` runs the model once on a sample with hooks
and :func:`with_activation_stats` writes the numbers into the workloads, where the sparse and
quantized engines of :mod:`modelzip.hardware` read them (zero skipping, output speculation,
bit-serial time).

Where the numbers come from (duck-typed, so no family is imported here):

* input zero fraction: the layer's first input tensor, counted in the hook;
* output zero fraction: the output of the next ReLU-like module (``nn.ReLU``, ``nn.ReLU6``,
  ``nn.Hardtanh`` with ``min_val >= 0``) whose input has as many elements as the layer's output
  (a BatchNorm between them keeps the count); failing that, the zero fraction of the next
  compute layer's input when it has the same size (a functional ``F.relu``, a flatten); else the
  layer's own output zeros;
* activation bits: a module's ``act_bits`` attribute (fake-quantized layers with PACT inputs) or,
  for int8 layers (``policy`` ``"static"`` or ``"dynamic"``), 8;
* predictor statistics: a module with ``outputs``, ``skipped``, ``macs_total`` and
  ``predictor_macs`` counters (``modelzip.prune.predict.PredictedReLULayer``): skipped outputs
  over outputs, and predictor MACs per dense MAC. Such a layer computes with its own (BN-folded)
  weight rather than by calling its inner ``layer``, so the counting hooks never see it;
  :func:`measure_activations` describes it by its inner layer (``NAME.layer``) and
  :func:`measured_workloads` puts it back in its place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from modelzip.core.running import run_hooked
from modelzip.core.workload import Workload

_RELU_LIKE = (nn.ReLU, nn.ReLU6)


@dataclasses.dataclass(frozen=True)
class ActivationStats:
    """One layer's measured activations (fractions in [0, 1]; ``act_bits`` None when float)."""

    in_zero: float = 0.0
    out_zero: float = 0.0
    act_bits: int | None = None
    predicted_skip: float = 0.0
    predictor_cost: float = 0.0
    # The layer's own workload, for a predictor layer the counting hooks cannot see.
    workload: Workload | None = dataclasses.field(default=None, compare=False, repr=False)


def _zeros(t: Any) -> float:
    if not isinstance(t, torch.Tensor) or t.numel() == 0:
        return 0.0
    return float((t == 0).sum().item()) / t.numel()


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x:
        return _first_tensor(x[0])
    return None


def _act_bits(module: nn.Module) -> int | None:
    bits = getattr(module, "act_bits", None)
    if isinstance(bits, int) and not isinstance(bits, bool) and bits > 0:
        return bits
    if getattr(module, "policy", None) in ("static", "dynamic"):
        return 8  # int8 layers quantize their inputs to 8 bits (uint8 or int8)
    return None


def _relu_like(module: nn.Module) -> bool:
    if isinstance(module, _RELU_LIKE):
        return True
    return isinstance(module, nn.Hardtanh) and module.min_val >= 0


def _has_predictor_counters(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("outputs", "skipped", "macs_total", "predictor_macs"))


@torch.no_grad()
def measure_activations(
    model: nn.Module, sample: Any, names: Iterable[str]
) -> dict[str, ActivationStats]:
    """Run ``model(sample)`` once and measure the modules named in ``names`` (workload names, or
    the modules that own them: ``conv1`` for ``conv1.layer`` and ``conv1.0``)."""
    wanted = set(names)

    def owns(name: str) -> bool:
        return name in wanted or any(w.startswith(name + ".") for w in wanted)

    modules = dict(model.named_modules())
    layers = {n: m for n, m in modules.items() if n and owns(n)}
    for n, m in modules.items():  # predictor layers that counting did not see
        inner_layer = getattr(m, "layer", None)
        if (
            n
            and n not in layers
            and _has_predictor_counters(m)
            and isinstance(inner_layer, nn.Module)
        ):
            layers[n] = m
    # Keep the outermost owner only: an inner module of a measured layer is part of it.
    outer = {n: m for n, m in layers.items() if not any(n.startswith(o + ".") for o in layers)}
    unseen = {n for n in outer if not owns(n)}
    inner: dict[str, Workload] = {}
    order: list[str] = []
    raw: dict[str, dict[str, Any]] = {}
    last: list[str] = []  # the compute layer that ran most recently

    def layer_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            x, y = _first_tensor(inputs), _first_tensor(output)
            if name in unseen:
                from modelzip.core.layer_workload import plain_workload

                inner[name] = plain_workload(f"{name}.layer", module.layer, inputs, output)
            if last and name != last[-1]:
                prev = raw[last[-1]]
                if prev["after"] is None and x is not None and x.numel() == prev["out_numel"]:
                    prev["next_in_zero"] = _zeros(x)
            raw[name] = {
                "in_zero": _zeros(x),
                "own_out_zero": _zeros(y),
                "out_numel": y.numel() if y is not None else -1,
                "after": None,
                "next_in_zero": None,
            }
            order.append(name)
            last.append(name)

        return hook

    def act_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = _first_tensor(inputs)
        if last and x is not None:
            prev = raw[last[-1]]
            if prev["after"] is None and x.numel() == prev["out_numel"]:
                prev["after"] = _zeros(_first_tensor(output))

    hooks = [(m, layer_hook(n)) for n, m in outer.items()]
    hooks += [(m, act_hook) for m in modules.values() if _relu_like(m)]
    run_hooked(model, sample, hooks)
    out = {}
    for name in dict.fromkeys(order):
        r = raw[name]
        module = outer[name]
        out_zero = r["after"] if r["after"] is not None else r["next_in_zero"]
        skip, cost = 0.0, 0.0
        if _has_predictor_counters(module) and module.outputs:
            skip = module.skipped / module.outputs
            cost = module.predictor_macs / module.macs_total if module.macs_total else 0.0
        out[name] = ActivationStats(
            in_zero=r["in_zero"],
            out_zero=r["own_out_zero"] if out_zero is None else out_zero,
            act_bits=_act_bits(module),
            predicted_skip=skip,
            predictor_cost=cost,
            workload=inner.get(name),
        )
    return out


def _owner(name: str, stats: dict[str, ActivationStats]) -> str | None:
    if name in stats:
        return name
    owners = [k for k in stats if name.startswith(k + ".")]
    return max(owners, key=len) if owners else None


def with_activation_stats(
    workloads: Iterable[Workload], stats: dict[str, ActivationStats]
) -> list[Workload]:
    """``workloads`` with the measured numbers written in.

    A layer described as several small ops (a decomposed or tensorized layer) gets its input
    sparsity on its first op and its output sparsity and predictor numbers on its last: the
    intermediates between its ops are not activated, so they are dense.
    """
    ws = list(workloads)
    owners = [_owner(w.name, stats) for w in ws]
    out = []
    for i, (w, key) in enumerate(zip(ws, owners, strict=True)):
        if key is None:
            out.append(w)
            continue
        s = stats[key]
        first = i == 0 or owners[i - 1] != key
        final = i == len(ws) - 1 or owners[i + 1] != key
        change: dict[str, Any] = {}
        if first:
            change["act_sparsity"] = s.in_zero
        if final:
            change["out_sparsity"] = s.out_zero
            change["predicted_skip"] = s.predicted_skip
            change["predictor_cost"] = s.predictor_cost
        if s.act_bits is not None:
            change["act_bits"] = min(w.act_bits, s.act_bits)
        out.append(dataclasses.replace(w, **change))
    return out


def measured_workloads(model: nn.Module, sample: Any) -> list[Workload]:
    """:func:`~modelzip.core.counting.collect_workloads` with the activation statistics of the
    same sample written in (two forward passes: one counts, one measures)."""
    from modelzip.core.counting import collect_workloads

    ws = collect_workloads(model, sample)
    stats = measure_activations(model, sample, [w.name for w in ws])
    extra = {n: s.workload for n, s in stats.items() if s.workload is not None}
    if extra:  # put the predictor layers back in the order the model ran them
        merged: list[Workload] = []
        pending = list(ws)
        for name in stats:
            if name in extra:
                merged.append(extra[name])
                continue
            while pending and _owner(pending[0].name, stats) != name:
                merged.append(pending.pop(0))
            while pending and _owner(pending[0].name, stats) == name:
                merged.append(pending.pop(0))
        ws = merged + pending
    return with_activation_stats(ws, stats)
