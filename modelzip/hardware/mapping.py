"""Per-layer mapping search: the lowest-energy or lowest-latency mapping of a layer on a spec.

As Timeloop's mapper does at larger scale (Parashar et al., ISPASS 2019), every mapping of a
pruned space is evaluated with the analytical model and the best kept. For a systolic array the
space is: dataflow (os, ws, is) x fold loop order (SCALE-Sim's column-outer, or row-outer, which
changes which operand is held in its buffer and which is re-fetched; see :mod:`.memory`) x array
orientation (the GEMM fed from either edge, when the array is not square). Row stationary
searches its own RF tiling (``p`` filters per PE) and batch blocking inside
:func:`~modelzip.hardware.eyeriss.row_stationary`. Ties break on the other objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from modelzip.core.errors import ConfigError
from modelzip.core.workload import Workload
from modelzip.hardware.energy import EnergyTable
from modelzip.hardware.layer_cost import estimate_layer
from modelzip.hardware.result import LayerEstimate
from modelzip.hardware.spec import AcceleratorSpec

ORDERS = ("col_outer", "row_outer")


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One point of the mapping space."""

    dataflow: str
    order: str = "col_outer"
    transposed: bool = False


def mapping_space(spec: AcceleratorSpec, dataflows: Sequence[str]) -> list[Mapping]:
    """Every mapping the search visits: dataflows x loop orders x orientations."""
    orientations = (False, True) if spec.rows != spec.cols else (False,)
    out = []
    for flow in dataflows:
        if flow == "rs":
            out.append(Mapping("rs"))
            continue
        out.extend(Mapping(flow, o, t) for o in ORDERS for t in orientations)
    return out


def search_mapping(
    w: Workload,
    spec: AcceleratorSpec,
    objective: str = "energy",
    dataflows: Sequence[str] = ("os", "ws", "is"),
    table: EnergyTable | None = None,
    **opts: Any,
) -> tuple[Mapping, LayerEstimate, list[tuple[Mapping, LayerEstimate]]]:
    """Best mapping of ``w`` on ``spec`` for ``objective``, its estimate, and all candidates.

    Parameters
    ----------
    objective
        ``"energy"`` (total energy, then cycles) or ``"latency"`` (cycles, then energy).
    dataflows
        The dataflows allowed (``"rs"`` only on spatial arrays).
    """
    if objective not in ("energy", "latency"):
        raise ConfigError(f"objective={objective!r} is not allowed; choose one of energy, latency")
    table = table or spec.energy_table()
    candidates = []
    for m in mapping_space(spec, dataflows):
        target = spec.replace(rows=spec.cols, cols=spec.rows) if m.transposed else spec
        est = estimate_layer(w, target, m.dataflow, table, order=m.order, **opts)
        label = m.order + ("/transposed" if m.transposed else "")
        candidates.append((m, dataclasses.replace(est, mapping=label)))

    def key(item: tuple[Mapping, LayerEstimate]) -> tuple[float, float]:
        est = item[1]
        if objective == "energy":
            return (est.total_energy, est.cycles)
        return (est.cycles, est.total_energy)

    best = min(candidates, key=key)
    return best[0], best[1], candidates
