"""Roofline view: each layer's operational intensity against the compute and bandwidth roofs.

Williams, Waterman and Patterson, "Roofline", CACM 2009. Attainable throughput in MACs per cycle
is ``min(peak, intensity * bandwidth)`` with ``peak`` the PE count (one MAC per PE per cycle) and
``bandwidth`` the spec's DRAM bytes per cycle; intensity is MACs per DRAM byte as the estimate
moved them (buffer re-fetches included), so a layer left of the ridge ``peak / bandwidth`` is
memory-bound. A spec without a bandwidth limit has no memory ceiling.
"""

from __future__ import annotations

import dataclasses
import math

from modelzip.hardware.presets import get_accelerator
from modelzip.hardware.result import Estimate
from modelzip.hardware.spec import AcceleratorSpec


@dataclasses.dataclass(frozen=True)
class RooflinePoint:
    """One layer on the roofline (throughputs in MACs per cycle)."""

    name: str
    intensity: float  # MACs per DRAM byte
    attainable: float
    achieved: float
    bound: str  # "compute" or "memory"


def ridge_point(spec: AcceleratorSpec) -> float:
    """Intensity (MACs per byte) where the bandwidth roof meets the compute roof."""
    return spec.pes / spec.dram_bandwidth if spec.dram_bandwidth > 0 else 0.0


def roofline(est: Estimate, accelerator: str | AcceleratorSpec) -> list[RooflinePoint]:
    """Roofline points of every layer of ``est`` under ``accelerator``'s ceilings."""
    spec = get_accelerator(accelerator)
    peak = float(spec.pes)
    points = []
    for x in est.layers:
        moved = x.dram_bytes
        intensity = x.macs / moved if moved else math.inf
        memory_roof = intensity * spec.dram_bandwidth if spec.dram_bandwidth > 0 else math.inf
        attainable = min(peak, memory_roof)
        points.append(
            RooflinePoint(
                name=x.name,
                intensity=intensity,
                attainable=attainable,
                achieved=x.macs / x.cycles if x.cycles else 0.0,
                bound="memory" if memory_roof < peak else "compute",
            )
        )
    return points
