"""Results of :func:`~modelzip.hardware.estimate`: per-layer and total cost, as data.

Energies are in ``energy_unit``: ``"pJ"`` with the Horowitz table, ``"normalized"`` (multiples
of one 16-bit MAC) with the Eyeriss table. Rendering beyond :meth:`Estimate.table_rows` lives
in the CLI.
"""

from __future__ import annotations

import dataclasses
from typing import Any

LEVELS = ("mac", "rf", "array", "buffer", "dram")


class _Totals:
    """``total_energy`` and ``dram_bytes`` of a layer's or a model's cost, from its ``energy``
    by level and its DRAM bytes read and written."""

    @property
    def total_energy(self) -> float:
        """Sum of the energy over levels."""
        return sum(self.energy.values())  # type: ignore[attr-defined]

    @property
    def dram_bytes(self) -> float:
        """DRAM bytes read and written."""
        return self.dram_read_bytes + self.dram_write_bytes  # type: ignore[attr-defined]


def _layers_sum(field: str, doc: str | None = None) -> Any:
    """A property of :class:`Estimate`: the sum of ``field`` over its layers."""
    return property(lambda self: sum(getattr(x, field) for x in self.layers), doc=doc)


@dataclasses.dataclass(frozen=True)
class LayerEstimate(_Totals):
    """Cost of one layer on one accelerator.

    ``weight_reuse`` is MACs per weight fetched from DRAM: ``N * P * Q`` for a layer whose weights
    are read once, so a fully connected layer at batch 1 has reuse 1 and at batch 16 reuse 16.
    """

    name: str
    op: str
    dataflow: str
    macs: int
    effective_macs: int
    cycles: int
    compute_cycles: int
    stall_cycles: int
    utilization: float
    mapping_efficiency: float
    folds: int
    energy: dict[str, float]
    dram_read_bytes: float
    dram_write_bytes: float
    sram_reads: float
    sram_writes: float
    weight_reuse: float
    weight_bits: int
    act_bits: int
    mapping: str = ""  # loop order and orientation when a mapping search chose them

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["total_energy"] = self.total_energy
        return out


@dataclasses.dataclass(frozen=True)
class Estimate(_Totals):
    """Per-layer results and totals of a model on one accelerator."""

    accelerator: str
    energy_unit: str
    clock_mhz: float
    pes: int
    area_mm2: dict[str, float]
    layers: tuple[LayerEstimate, ...]

    cycles = _layers_sum("cycles", "Total cycles, stalls included (layers run one after another).")
    compute_cycles = _layers_sum("compute_cycles")
    stall_cycles = _layers_sum("stall_cycles")
    macs = _layers_sum("macs")
    dram_read_bytes = _layers_sum("dram_read_bytes")
    dram_write_bytes = _layers_sum("dram_write_bytes")

    @property
    def energy(self) -> dict[str, float]:
        """Total energy by level."""
        return {k: sum(x.energy.get(k, 0.0) for x in self.layers) for k in LEVELS}

    @property
    def latency_s(self) -> float:
        """Seconds at the spec's clock."""
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def utilization(self) -> float:
        """Cycle-weighted mean of the layers' utilization (each against its own peak)."""
        busy = sum(x.utilization * x.cycles for x in self.layers)
        return busy / self.cycles if self.cycles else 0.0

    def totals(self) -> dict[str, Any]:
        """The model-level numbers: cycles, latency, energy by level, DRAM bytes, area."""
        return {
            "cycles": self.cycles,
            "compute_cycles": self.compute_cycles,
            "stall_cycles": self.stall_cycles,
            "latency_s": self.latency_s,
            "macs": self.macs,
            "utilization": self.utilization,
            "energy": self.energy,
            "total_energy": self.total_energy,
            "dram_read_bytes": self.dram_read_bytes,
            "dram_write_bytes": self.dram_write_bytes,
            "area_mm2": self.area_mm2,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: accelerator, unit, totals and every layer."""
        return {
            "accelerator": self.accelerator,
            "energy_unit": self.energy_unit,
            "clock_mhz": self.clock_mhz,
            "pes": self.pes,
            "totals": self.totals(),
            "layers": [x.to_dict() for x in self.layers],
        }

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per layer plus a total row, with the columns the CLI prints."""
        rows = []
        for x in self.layers:
            bits = f"w{x.weight_bits}a{x.act_bits}"
            rows.append(_table_row(x, x.name, x.dataflow, bits, round(x.weight_reuse, 2)))
        return [*rows, _table_row(self, "TOTAL", "", "", "")]


def _table_row(
    cost: LayerEstimate | Estimate, layer: str, dataflow: str, bits: str, weight_reuse: float | str
) -> dict[str, Any]:
    energy = cost.energy  # an Estimate sums it over the layers on each access
    return {
        "layer": layer,
        "dataflow": dataflow,
        "bits": bits,
        "macs": cost.macs,
        "cycles": cost.cycles,
        "stalls": cost.stall_cycles,
        "util": round(cost.utilization, 4),
        **{f"E_{k}": energy[k] for k in LEVELS},
        "energy": cost.total_energy,
        "dram_kB": round(cost.dram_bytes / 1024, 2),
        "weight_reuse": weight_reuse,
    }
