"""The cost of one layer on one accelerator mapping: :func:`estimate_layer`.

The steps for one :class:`~modelzip.core.workload.Workload` on a systolic mapping (``os``,
``ws``, ``is``):

1. compute cycles, folds and SRAM accesses from SCALE-Sim's closed form (:mod:`.systolic`);
   the streamed part ``T`` of each fold is scaled by the PE's cycle factor at the layer's bits
   (:mod:`.quantized`) and by the sparse engine's cycle fraction (:mod:`.sparse`), the fill and
   drain of the array are not;
2. DRAM words from the buffer capacities and the fold order (:mod:`.memory`), in bytes at the
   layer's bits, scaled by sparse storage and activation compression;
3. with ``dram_bandwidth`` set, stall cycles ``max(0, bytes / bandwidth - compute_cycles)``
   (double buffering overlaps transfer and compute; what does not overlap stalls);
4. energy per level = accesses x the spec's table (:mod:`.energy`), memory levels scaled by the
   bits moved over ``word_bits``: MAC, RF (three operand-register accesses per MAC), array (two
   PE-to-PE hops per MAC), buffer (SRAM reads and writes, DRAM fills and drains included), DRAM.

On ``rs`` the counts come from :mod:`.eyeriss` instead of step 1-2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from modelzip.core.workload import Workload
from modelzip.hardware.energy import EnergyTable
from modelzip.hardware.eyeriss import row_stationary
from modelzip.hardware.memory import Traffic, dram_traffic
from modelzip.hardware.quantized import cycle_factor, pe_mac_energy
from modelzip.hardware.result import LayerEstimate
from modelzip.hardware.sparse import SparseEffect, sparse_effect
from modelzip.hardware.spec import AcceleratorSpec
from modelzip.hardware.systolic import systolic_counts


def _per_layer(value: Any, name: str, default: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get(name, default)
    return default if value is None else value


def layer_bits(w: Workload, spec: AcceleratorSpec, bits: Any, cast_wider: bool) -> tuple[int, int]:
    """The (weight, activation) bits a layer runs at on ``spec``.

    ``bits`` overrides per layer name (``{"conv1": (4, 8)}``), e.g. from a quantization recipe.
    With ``cast_wider`` a layer wider than the datapath (an unquantized fp32 model on an 8-bit
    array) is taken as cast to ``word_bits``, as it would be deployed; without it, it takes
    several passes of the datapath.
    """
    wb, ab = _per_layer(bits, w.name, (w.weight_bits, w.act_bits))
    if cast_wider:
        wb, ab = min(wb, spec.word_bits), min(ab, spec.word_bits)
    return int(wb), int(ab)


def _systolic_layer(
    w: Workload,
    spec: AcceleratorSpec,
    dataflow: str,
    wb: int,
    ab: int,
    sp: SparseEffect,
    order: str,
) -> dict[str, Any]:
    counts = systolic_counts(w, spec.rows, spec.cols, dataflow)
    factor = cycle_factor(spec, wb, ab) * sp.cycle_fraction
    fill = counts.cycles_per_fold - counts.T
    stream = math.ceil(counts.T * factor)
    if spec.pipelined_folds:  # broadcast tiles: one fill and drain for the whole layer
        compute = fill + counts.folds * stream
    else:  # systolic: every fold is skewed in and out
        compute = counts.folds * (fill + stream)
    traffic = dram_traffic(w, spec, dataflow, wb, ab, order).scaled(
        sp.ifmap_dram_factor, sp.weight_factor, sp.ofmap_dram_factor
    )
    return {
        "compute_cycles": compute,
        "folds": counts.folds,
        "mapping_efficiency": counts.mapping_efficiency,
        "sram_reads": counts.ifmap_reads * ab / spec.word_bits
        + counts.filter_reads * wb * sp.weight_factor / spec.word_bits,
        "sram_writes": counts.ofmap_writes * ab / spec.word_bits,
        "rf": 3.0 * w.macs * sp.mac_fraction * (wb + 2 * ab) / (3 * spec.word_bits),
        "array": 2.0 * w.macs * sp.mac_fraction * ab / spec.word_bits,
        "traffic": traffic,
    }


def _rs_layer(
    w: Workload, spec: AcceleratorSpec, wb: int, ab: int, sp: SparseEffect
) -> dict[str, Any]:
    rs = row_stationary(w, spec, ab, wb)
    traffic = Traffic(rs.dram_ifmap, rs.dram_filter, rs.dram_ofmap, rs.dram_psum_reads).scaled(
        sp.ifmap_dram_factor, sp.weight_factor, sp.ofmap_dram_factor
    )
    factor = cycle_factor(spec, wb, ab) * sp.cycle_fraction
    scale = (wb + 2 * ab) / (3 * spec.word_bits)
    return {
        "compute_cycles": math.ceil(rs.compute_cycles * factor),
        "folds": 1,
        "mapping_efficiency": rs.active_pes / spec.pes,
        "sram_reads": rs.buffer_reads * scale,
        "sram_writes": rs.buffer_writes * scale,
        "rf": rs.rf * sp.mac_fraction * scale,
        "array": rs.array * ab / spec.word_bits,
        "traffic": traffic,
    }


def estimate_layer(
    w: Workload,
    spec: AcceleratorSpec,
    dataflow: str,
    table: EnergyTable,
    order: str = "col_outer",
    **opts: Any,
) -> LayerEstimate:
    """Cost of one workload; see :func:`estimate` for ``opts``, :mod:`.memory` for ``order``."""
    wb, ab = layer_bits(w, spec, opts.get("bits"), opts.get("cast_wider", True))
    sp = sparse_effect(
        spec,
        w,
        wb,
        ab,
        structured=_per_layer(opts.get("structured"), w.name, None),
        output_sparsity=_per_layer(opts.get("output_sparsity"), w.name, None),
        speculation_prefix=float(opts.get("speculation_prefix", 0.5)),
    )
    if w.macs == 0:  # embeddings: a lookup, only its DRAM reads
        rows = w.N * w.time_steps
        read = rows * w.K * wb / 8
        energy = dict.fromkeys(("mac", "rf", "array", "buffer"), 0.0)
        energy["dram"] = read * 8 / spec.word_bits * table.dram
        return LayerEstimate(
            w.name,
            w.op,
            dataflow,
            0,
            0,
            0,
            0,
            0,
            0.0,
            0.0,
            0,
            energy,
            read,
            0.0,
            0.0,
            0.0,
            0.0,
            wb,
            ab,
        )
    if dataflow == "rs":
        parts = _rs_layer(w, spec, wb, ab, sp)
    else:
        parts = _systolic_layer(w, spec, dataflow, wb, ab, sp, order)
    t = parts["traffic"]
    read_bytes = (t.ifmap_reads + t.psum_reads) * ab / 8 + t.filter_reads * wb / 8
    write_bytes = t.ofmap_writes * ab / 8
    compute = int(parts["compute_cycles"])
    stall = 0
    if spec.dram_bandwidth > 0 and opts.get("stalls", True):
        stall = max(0, math.ceil((read_bytes + write_bytes) / spec.dram_bandwidth) - compute)
    dram_words = (read_bytes + write_bytes) * 8 / spec.word_bits
    executed = w.macs * sp.mac_fraction
    # PE-cycles per MAC at these bits: utilization is against the engine's peak at the layer's
    # precision, so a bit-serial PE that does two 8-bit MACs a cycle is not 200 % busy.
    peak = cycle_factor(spec, wb, ab)
    energy = {
        "mac": executed * pe_mac_energy(spec, table, wb, ab)
        + w.macs * sp.overhead_per_mac * table.mac,
        "rf": parts["rf"] * table.rf,
        "array": parts["array"] * table.array,
        "buffer": (parts["sram_reads"] + parts["sram_writes"] + dram_words) * table.buffer,
        "dram": dram_words * table.dram,
    }
    cycles = compute + stall
    return LayerEstimate(
        name=w.name,
        op=w.op,
        dataflow=dataflow,
        macs=w.macs,
        effective_macs=round(executed),
        cycles=cycles,
        compute_cycles=compute,
        stall_cycles=stall,
        utilization=executed * peak / (spec.pes * cycles) if cycles else 0.0,
        mapping_efficiency=float(parts["mapping_efficiency"]),
        folds=int(parts["folds"]),
        energy=energy,
        dram_read_bytes=read_bytes,
        dram_write_bytes=write_bytes,
        sram_reads=float(parts["sram_reads"]),
        sram_writes=float(parts["sram_writes"]),
        weight_reuse=w.macs / t.filter_reads if t.filter_reads else math.inf,
        weight_bits=wb,
        act_bits=ab,
    )
