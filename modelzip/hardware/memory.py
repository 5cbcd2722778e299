"""DRAM traffic of a systolic mapping: SCALE-Sim's read buffers for ifmap and filter, fold order
and buffer capacity for the outputs.

Reads. The ifmap and filter words read from DRAM are those SCALE-Sim 3.0's read buffers fetch,
from :mod:`.buffer_sim`: the array's requests in SCALE-Sim's order (folds with the column folds
outside and the row folds inside, ``for fc in col_folds: for fr in row_folds``), served by a
buffer that is emptied every ``active_fraction`` of its capacity in misses. An operand whose
distinct words fit is read once; one that does not is re-fetched wherever its reuse distance in
that stream exceeds the buffer, which includes the overlap of neighbouring conv windows (an
im2col row fetched again) and every sweep of the inner fold loop. Unique sizes are the addresses
SCALE-Sim uses (a stride larger than the kernel skips pixels). ``order="row_outer"`` swaps the
fold loops (a mapping choice that :mod:`.mapping` may make); its stream is built the same way.

Writes. Every output is written once; a ws / is layer of several row folds writes partial sums:
with ``accumulate_in_buffer=False`` (SCALE-Sim's model) every row fold writes its outputs to DRAM
and nothing is read back; otherwise they accumulate in the ofmap buffer, spilling (written
``row_folds`` times, read back ``row_folds - 1`` times) only when a block of the outputs in
flight (``Px x cols`` in ws, ``cols x K`` in is, the whole output in ``row_outer``) does not fit.

Groups each bring their own operands; recurrent steps reuse the weights when all of them fit.
"""

from __future__ import annotations

import dataclasses

from modelzip.core.workload import Workload
from modelzip.hardware.buffer_sim import scalesim_reads, set_capacity
from modelzip.hardware.spec import AcceleratorSpec
from modelzip.hardware.systolic import SystolicCounts, gemm_dims, systolic_gemm


@dataclasses.dataclass(frozen=True)
class Traffic:
    """DRAM words moved for one layer, by operand (multiply by bits / 8 for bytes)."""

    ifmap_reads: float
    filter_reads: float
    ofmap_writes: float
    psum_reads: float = 0.0

    def scaled(self, ifmap: float = 1.0, filt: float = 1.0, ofmap: float = 1.0) -> Traffic:
        """Traffic with each operand's words multiplied (compression, sparse weights)."""
        return Traffic(
            self.ifmap_reads * ifmap,
            self.filter_reads * filt,
            self.ofmap_writes * ofmap,
            self.psum_reads * ofmap,
        )


def input_size(w: Workload) -> tuple[int, int]:
    """Input height and width: the workload's own, or the span of its windows when it has none."""
    h_in = w.H if w.H >= w.R else (w.P - 1) * w.stride_h + w.R
    w_in = w.W if w.W >= w.S else (w.Q - 1) * w.stride_w + w.S
    return h_in, w_in


def operand_words(w: Workload) -> tuple[int, int, int]:
    """Unique ifmap, filter and ofmap words of one group and one time step."""
    h_in, w_in = input_size(w)
    return w.N * w.C * h_in * w_in, w.K * w.C * w.R * w.S, w.N * w.K * w.P * w.Q


def dram_traffic(
    w: Workload,
    spec: AcceleratorSpec,
    dataflow: str,
    weight_bits: int,
    act_bits: int,
    order: str = "col_outer",
) -> Traffic:
    """DRAM words read and written for ``w`` on a systolic ``spec`` with ``dataflow``.

    ``order="col_outer"`` is SCALE-Sim's fold order; ``"row_outer"`` swaps the loops, so the
    operand that was swept is held and the other swept, and in ws / is the partial sums of the
    whole output accumulate across the outer loop (a choice for :mod:`.mapping`).
    """
    ofmap_px, window, filters, _ = gemm_dims(w)
    counts: SystolicCounts = systolic_gemm(
        ofmap_px, window, filters, spec.rows, spec.cols, dataflow
    )
    _, filt, ofmap = operand_words(w)
    frac = spec.buffer_active_fraction
    filter_cap = spec.filter_sram_kb * frac * 1024 * 8 / weight_bits
    ofmap_cap = spec.ofmap_sram_kb * frac * 1024 * 8 / act_bits
    h_in, w_in = input_size(w)
    geometry = (w.N, w.C, w.K, h_in, w_in, w.R, w.S, w.P, w.Q, w.stride_h, w.stride_w)
    ifmap_reads, filter_reads = scalesim_reads(
        geometry,
        spec.rows,
        spec.cols,
        dataflow,
        order,
        set_capacity(spec.ifmap_sram_kb, act_bits, frac),
        set_capacity(spec.filter_sram_kb, weight_bits, frac),
    )
    ofmap_writes, psum_reads = float(ofmap), 0.0
    rf, cols = counts.row_folds, spec.cols
    if order == "col_outer":
        spill_block = 0.0
        if dataflow == "ws":
            spill_block = ofmap_px * min(cols, filters)
        elif dataflow == "is":
            spill_block = min(cols, ofmap_px) * filters
    else:
        spill_block = float(ofmap) if dataflow in ("ws", "is") else 0.0
    if dataflow in ("ws", "is") and rf > 1 and not spec.accumulate_in_buffer:
        ofmap_writes = ofmap * rf  # SCALE-Sim: each fold's outputs go to DRAM, none come back
    elif dataflow in ("ws", "is") and rf > 1 and spill_block > ofmap_cap:
        ofmap_writes = ofmap * rf
        psum_reads = ofmap * (rf - 1)
    groups, steps = w.groups, w.time_steps
    weights_stay = filt * groups <= filter_cap
    filter_total = filter_reads * groups * (1 if weights_stay else steps)
    times = groups * steps
    return Traffic(ifmap_reads * times, filter_total, ofmap_writes * times, psum_reads * times)
