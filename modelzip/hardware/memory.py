"""DRAM traffic of a systolic mapping from buffer capacities and the fold loop order.

SCALE-Sim walks folds with the column folds outside and the row folds inside
(``for fc in col_folds: for fr in row_folds``). An operand indexed only by the outer loop is used
once per outer step; one indexed by the inner loop is swept again for every outer step, so it is
re-read from DRAM ``col_folds`` times unless all of it fits in its buffer's active part (the
buffers are double buffered: ``buffer_active_fraction`` of each holds the working set):

====  ======================  ======================  ===================================
flow  ifmap                   filter                  ofmap
====  ======================  ======================  ===================================
os    swept (inner)           per outer step          written once
ws    swept (inner)           read once               partial sums spill unless a column
                                                      block ``Px x cols`` fits
is    read once               swept (inner)           partial sums spill unless a block
                                                      ``cols x K`` fits
====  ======================  ======================  ===================================

In OS a filter block (``W x cols``) that does not fit is re-read for every row fold. A spilled
partial sum is written ``row_folds`` times and read back ``row_folds - 1`` times. With
``accumulate_in_buffer=False`` (SCALE-Sim's model) every ws / is row fold writes its outputs to
DRAM and nothing is read back. Unique operand sizes are the tensors themselves, as SCALE-Sim
counts unique addresses. Recurrent steps reuse the weights when all of them fit; groups each bring
their own.

SCALE-Sim's buffers differ in one way: they keep the latest unique addresses in sets of 1 % of the
buffer and, when full, drop half of the buffer at once, so an operand larger than half the buffer
loses part of the block in use and re-fetches that part; here an operand either fits or is
re-fetched whole, so the two agree where operands fit or clearly do not, and differ in between.
"""

from __future__ import annotations

import dataclasses

from modelzip.core.workload import Workload
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
    ifmap, filt, ofmap = operand_words(w)
    frac = spec.buffer_active_fraction * 1024 * 8  # bits per kB of active buffer
    ifmap_cap = spec.ifmap_sram_kb * frac / act_bits
    filter_cap = spec.filter_sram_kb * frac / weight_bits
    ofmap_cap = spec.ofmap_sram_kb * frac / act_bits
    rows, cols, rf, cf = spec.rows, spec.cols, counts.row_folds, counts.col_folds
    ifmap_reads, filter_reads, ofmap_writes, psum_reads = (
        float(ifmap),
        float(filt),
        float(ofmap),
        0.0,
    )
    spill_block = 0.0
    if order == "col_outer":
        if dataflow in ("os", "ws") and ifmap > ifmap_cap:
            ifmap_reads = ifmap * cf
        if dataflow == "os" and window * min(cols, filters) > filter_cap:
            filter_reads = filt * rf
        if dataflow == "is" and filt > filter_cap:
            filter_reads = filt * cf
        if dataflow == "ws":
            spill_block = ofmap_px * min(cols, filters)
        elif dataflow == "is":
            spill_block = min(cols, ofmap_px) * filters
    else:
        if dataflow == "os" and min(rows, ofmap_px) * window > ifmap_cap:
            ifmap_reads = ifmap * cf
        if dataflow == "ws" and ofmap_px * min(rows, window) > ifmap_cap:
            ifmap_reads = ifmap * cf
        if dataflow == "os" and filt > filter_cap:
            filter_reads = filt * rf
        if dataflow == "is" and min(rows, window) * filters > filter_cap:
            filter_reads = filt * cf
        if dataflow in ("ws", "is"):
            spill_block = float(ofmap)
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
