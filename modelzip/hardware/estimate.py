"""``estimate(workloads, accelerator, dataflow)``: cycles, energy by level, DRAM traffic and area.

Each layer is costed by :func:`~modelzip.hardware.layer_cost.estimate_layer` (the steps are in
:mod:`.layer_cost`) on the requested dataflow, or on the best mapping that :mod:`.mapping`
finds; this module checks the options and gathers the layers' estimates, with the area of the
spec, into an :class:`~modelzip.hardware.result.Estimate`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from modelzip.core.errors import ConfigError
from modelzip.core.workload import Workload
from modelzip.hardware.energy import SRAM_AREA_UM2_PER_KB
from modelzip.hardware.layer_cost import estimate_layer
from modelzip.hardware.mapping import search_mapping
from modelzip.hardware.presets import get_accelerator
from modelzip.hardware.quantized import pe_area_um2
from modelzip.hardware.result import Estimate
from modelzip.hardware.spec import AcceleratorSpec
from modelzip.hardware.tt_engine import keep_intermediates_on_chip, tt_chains

_OPTS = {
    "bits",
    "cast_wider",
    "stalls",
    "structured",
    "output_sparsity",
    "speculation_prefix",
    "search",
}


def area_mm2(spec: AcceleratorSpec) -> dict[str, float]:
    """PE array and buffer area from per-unit figures (Horowitz 45 nm; see :mod:`.energy`)."""
    pe = pe_area_um2(spec) * spec.pes / 1e6
    buffers = spec.buffer_kb * SRAM_AREA_UM2_PER_KB / 1e6
    return {"pe_array": pe, "buffers": buffers, "total": pe + buffers}


def estimate(
    workloads: Iterable[Workload],
    accelerator: str | AcceleratorSpec = "eyeriss",
    dataflow: str | None = None,
    **opts: Any,
) -> Estimate:
    """Cycles, energy by level, utilization, DRAM traffic and area of a model on an accelerator.

    Parameters
    ----------
    workloads
        The model's layers (from ``modelzip.core.counting``, a SCALE-Sim topology, or built
        directly).
    accelerator
        A preset name (:func:`list_accelerators`), a path to a spec ``.yaml``, or a spec.
    dataflow
        ``"os"``, ``"ws"``, ``"is"`` (systolic, SCALE-Sim-exact compute) or ``"rs"`` (row
        stationary, spatial arrays only); default the spec's own.
    **opts
        ``bits`` ({layer: (w, a)}) per-layer bit-widths; ``cast_wider`` (default True) runs layers
        wider than the datapath at its width; ``stalls`` (default True) applies the bandwidth limit
        when the spec has one; ``structured`` (bool or {layer: bool}) marks weight sparsity as
        structured (default: what the workload's ``weight_structure`` says);
        ``output_sparsity`` (float or {layer: float}; default the measured
        ``Workload.out_sparsity``) feeds SnaPEA speculation and output compression;
        ``speculation_prefix`` (default 0.5); ``search`` (``"energy"`` or
        ``"latency"``) searches each layer's mapping (:mod:`.mapping`) instead of using
        ``dataflow`` with SCALE-Sim's fold order.

    Returns
    -------
    Estimate
        Per-layer :class:`LayerEstimate` and totals; energies in ``Estimate.energy_unit``.
    """
    unknown = sorted(set(opts) - _OPTS)
    if unknown:
        raise ConfigError(f"estimate() got unknown option {unknown[0]!r}; known: {sorted(_OPTS)}")
    workloads = list(workloads)
    spec = get_accelerator(accelerator)
    flow = dataflow or spec.dataflow
    if flow not in ("os", "ws", "is", "rs"):
        raise ConfigError(
            f"dataflow={flow!r} is not allowed; choose one of ['os', 'ws', 'is', 'rs']"
        )
    if flow == "rs" and spec.array != "spatial":
        raise ConfigError(f"dataflow='rs' needs a spatial array; {spec.name!r} is {spec.array}")
    table = spec.energy_table()
    objective = opts.pop("search", None)
    if objective is not None:
        flows = ("rs",) if flow == "rs" else ("os", "ws", "is")
        layers = tuple(
            search_mapping(w, spec, objective, flows, table=table, **opts)[1] for w in workloads
        )
    else:
        layers = tuple(estimate_layer(w, spec, flow, table, **opts) for w in workloads)
    if spec.tt_engine:  # a TT / HT layer's stages back to back, intermediates on chip
        kept = list(layers)
        for chain in tt_chains(workloads):
            keep_intermediates_on_chip(kept, workloads, spec, table, chain)
        layers = tuple(kept)
    return Estimate(
        accelerator=spec.name,
        energy_unit=table.unit,
        clock_mhz=spec.clock_mhz,
        pes=spec.pes,
        area_mm2=area_mm2(spec),
        layers=layers,
    )
