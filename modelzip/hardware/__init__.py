"""Analytical accelerator model: specs, dataflows, memory hierarchy, quantized and sparse engines.

Reads only :class:`~modelzip.core.workload.Workload` records, never torch modules. The systolic
dataflows (os, ws, is) reproduce SCALE-Sim's compute cycles, folds and SRAM accesses exactly;
row stationary follows Eyeriss. See :func:`estimate`.
"""

from modelzip.hardware.command import cli_estimate, render_table
from modelzip.hardware.energy import EnergyTable
from modelzip.hardware.estimate import estimate
from modelzip.hardware.mapping import search_mapping
from modelzip.hardware.presets import get_accelerator, list_accelerators
from modelzip.hardware.result import Estimate, LayerEstimate
from modelzip.hardware.roofline import roofline
from modelzip.hardware.scalesim_io import spec_from_scalesim_cfg, workloads_from_topology_csv
from modelzip.hardware.spec import AcceleratorSpec, SparseSupport
from modelzip.hardware.tensorized import estimate_tt, tt_workloads

__all__ = [
    "AcceleratorSpec",
    "EnergyTable",
    "Estimate",
    "LayerEstimate",
    "SparseSupport",
    "cli_estimate",
    "estimate",
    "estimate_tt",
    "get_accelerator",
    "list_accelerators",
    "render_table",
    "roofline",
    "search_mapping",
    "spec_from_scalesim_cfg",
    "tt_workloads",
    "workloads_from_topology_csv",
]
