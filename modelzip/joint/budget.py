"""Budgets for automatic compression: what a target such as ``size=50kB`` means and how to check it.

A budget is one cost kind and a limit:

- ``size``: the model's stored bytes (:func:`modelzip.core.counting.module_bytes`: packed
  codes, sparse values and masks, factors) — ``B``, ``kB``/``MB``/``GB`` (powers of 1000),
  ``KiB``/``MiB``;
- ``macs``: multiply-accumulates of one input with a nonzero weight (pruned weights do not count),
  from :func:`modelzip.core.counting.collect_workloads` — plain, ``K``, ``M``, ``G``;
- ``latency``: measured wall time of a forward pass on the CPU (:mod:`modelzip.measure`) —
  ``us``, ``ms``, ``s``;
- ``energy``: energy of one input on an accelerator model (:func:`modelzip.hardware.estimate`) —
  ``pJ``, ``nJ``, ``uJ``, ``mJ``, ``J``; a plain number is in the accelerator's own unit (Eyeriss's
  normalized table counts a MAC as 1). A preset whose table is normalized is costed with
  Horowitz's 45 nm table (pJ) when the budget is given in joules;
- ``cycles``: cycles of one input on the accelerator model — plain, ``K``, ``M``, ``G``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Literal

import torch
from torch import nn

from modelzip.core.errors import ConfigError, ModelzipError
from modelzip.core.frozen import ConfigBase, check_range

Kind = Literal["size", "macs", "latency", "energy", "cycles"]
KINDS: tuple[str, ...] = ("size", "macs", "latency", "energy", "cycles")

# Each kind's units, as factors to its canonical unit (bytes, MACs, ms, uJ, cycles).
_COUNT = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_UNITS: dict[str, dict[str, float]] = {
    "size": {
        "": 1.0,
        "B": 1.0,
        "kB": 1e3,
        "KB": 1e3,
        "MB": 1e6,
        "GB": 1e9,
        "KiB": 1024.0,
        "MiB": 1024.0**2,
    },
    "macs": _COUNT,
    "cycles": _COUNT,
    "latency": {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3},
    "energy": {"pJ": 1e-6, "nJ": 1e-3, "uJ": 1.0, "µJ": 1.0, "mJ": 1e3, "J": 1e6},
}
CANONICAL_UNIT = {"size": "B", "macs": "MACs", "cycles": "cycles", "latency": "ms", "energy": "uJ"}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]*)\s*$")


class InfeasibleBudgetError(ModelzipError):
    """No allowed setting meets the budget within the tolerated accuracy drop."""


@dataclasses.dataclass(frozen=True)
class Budget(ConfigBase):
    """A cost limit: ``kind`` and ``limit`` in the kind's canonical unit (see the module doc).

    ``native_unit`` is True for an energy given as a plain number, in the accelerator's own unit.
    """

    kind: Kind = "size"
    limit: float = 1.0
    native_unit: bool = False

    def validate(self) -> None:
        check_range(self, "limit", 0.0, low_open=True)
        if math.isinf(self.limit):
            raise ConfigError(f"Budget.limit={self.limit!r} is not finite")

    @property
    def unit(self) -> str:
        return "native" if self.native_unit else CANONICAL_UNIT[self.kind]

    def describe(self, value: float | None = None) -> str:
        """``size 50,000 B`` or, with ``value``, that value in the budget's unit."""
        v = self.limit if value is None else value
        return f"{self.kind} {v:,.6g} {self.unit}"

    @property
    def needs_accelerator(self) -> bool:
        return self.kind in ("energy", "cycles")


def parse_budget(text: str) -> Budget:
    """Parse ``KIND=NUMBER[UNIT]`` (``size=50kB``, ``macs=2M``, ``latency=1.5ms``, ``energy=3uJ``,
    ``cycles=1e6``) into a :class:`Budget`; a bad kind, number or unit says what is allowed."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(
            f"budget {text!r} must look like KIND=VALUE, e.g. size=50kB; kinds: {list(KINDS)}"
        )
    kind, _, value = text.partition("=")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"budget kind {kind!r} is not allowed; choose one of {list(KINDS)}")
    match = _NUMBER.match(value)
    if not match:
        raise ConfigError(f"budget {text!r}: {value!r} is not a number with an optional unit")
    number, unit = float(match.group(1)), match.group(2)
    units = _UNITS[kind]
    native = kind == "energy" and unit == ""
    if unit not in units and not native:
        allowed = [u for u in units if u] or ["(none)"]
        raise ConfigError(
            f"budget {text!r}: unit {unit!r} is not allowed for {kind}; use {allowed}"
        )
    if number <= 0:
        raise ConfigError(f"budget {text!r} must be positive")
    return Budget(kind=kind, limit=number * (1.0 if native else units[unit]), native_unit=native)


@dataclasses.dataclass
class CostModel:
    """Measures one budget's cost of a model: bytes, nonzero MACs, CPU latency or accelerator cost.

    ``sample`` is the input batch of the latency measurement; MACs, energy and cycles are per
    input (its first row).
    """

    budget: Budget
    sample: torch.Tensor
    accelerator: Any = "eyeriss"
    latency_repeats: int = 15

    def __post_init__(self) -> None:
        if self.budget.needs_accelerator:
            from modelzip.hardware import get_accelerator

            spec = get_accelerator(self.accelerator)
            joules = self.budget.kind == "energy" and not self.budget.native_unit
            if joules and spec.energy_table().unit != "pJ":
                spec = spec.replace(energy_model="horowitz")
            self.accelerator = spec

    def __call__(self, model: nn.Module) -> float:
        kind = self.budget.kind
        if kind == "size":
            from modelzip.core.counting import module_bytes

            return float(module_bytes(model))
        if kind == "latency":
            from modelzip.measure import measure_latency

            return measure_latency(model, self.sample, repeats=self.latency_repeats)
        from modelzip.core.counting import collect_workloads

        workloads = collect_workloads(model, self.sample[:1])
        if kind == "macs":
            return float(sum(w.effective_macs for w in workloads))
        return self.hardware(workloads)[kind]

    def hardware(self, workloads: Any) -> dict[str, float]:
        """``{'energy': ..., 'cycles': ...}`` of ``workloads`` (energy in the budget's unit)."""
        from modelzip.hardware import estimate

        est = estimate(workloads, self.accelerator)
        energy = est.total_energy
        if est.energy_unit == "pJ" and not self.budget.native_unit:
            energy *= _UNITS["energy"]["pJ"]
        return {"energy": float(energy), "cycles": float(est.cycles)}
