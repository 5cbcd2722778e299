"""Row-stationary (RS) dataflow on an Eyeriss-like spatial array.

Chen, Emer and Sze, "Eyeriss: A Spatial Architecture for Energy-Efficient Dataflow for CNNs",
ISCA 2016, and Chen et al., ISSCC 2016 / JSSC 2017. Each PE runs a 1-D convolution: it keeps one
filter row (``S`` weights) in its register file, slides it over one ifmap row and produces one row
of partial sums (``Q`` outputs). A *PE set* of ``R x e`` PEs (filter rows x output rows, with
``e <= min(P, cols)``, the widest by default, narrower when that lets a strip's ifmap rows fit
the buffer) computes ``e`` output rows of one 2-D convolution: filter rows are reused
across a PE row, ifmap rows diagonally, partial sums accumulate up the columns. Several sets fill
the ``rows x cols`` array (``floor(rows / R) * floor(cols / e)``) and take different filters or
channels. Inside a PE the RF interleaves ``p`` filters and ``q`` channels, limited by the
Eyeriss RF split (ifmap 12, filter 224, psum 24 words of 16 bits, 0.5 kB in all).

Counts per layer (one MAC per PE per cycle)::

    passes  = N * ceil(K / (p tK)) * ceil(C / (q tC)) * ceil(P / e) * ceil(R / rows)
    cycles  = passes * p * q * S * Q
    RF      = 4 accesses per MAC (weight, ifmap, psum read and write)
    array   = psum hops up the set (R - 1 per output per channel pass), ifmap diagonal and
              filter horizontal multicast
    buffer  = ifmap rows per filter pass + psum read/write between channel passes (filters go
              from DRAM to the PEs' RFs)
    DRAM    = each tensor once when its working set fits the global buffer, else re-read per
              pass (loop order and the choice of ``p``, ``q`` and batch blocking in
              ``row_stationary``)
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from modelzip.core.workload import Workload
from modelzip.hardware.memory import input_size
from modelzip.hardware.spec import AcceleratorSpec

# Eyeriss's RF split, in 16-bit words: ifmap, filter, psum spads (ISSCC 2016).
RF_SPLIT = (12, 224, 24)


@dataclasses.dataclass(frozen=True)
class RowStationaryCounts:
    """Cycles and accesses (in words) of one layer under row stationary."""

    compute_cycles: int
    active_pes: int
    macs: int
    rf: float
    array: float
    buffer_reads: float
    buffer_writes: float
    dram_ifmap: float
    dram_filter: float
    dram_ofmap: float
    dram_psum_reads: float
    p: int
    q: int
    sets: int


def _rf_tiling(spec: AcceleratorSpec, w: Workload) -> tuple[int, int]:
    """Largest ``p`` filters x ``q`` channels whose rows fit the RF (scaled Eyeriss split)."""
    words = spec.rf_bytes * 8 // spec.word_bits
    scale = words / sum(RF_SPLIT)
    ifmap_words = max(1, int(RF_SPLIT[0] * scale))
    filter_words = max(1, int(RF_SPLIT[1] * scale))
    psum_words = max(1, int(RF_SPLIT[2] * scale))
    q = max(1, min(w.C, ifmap_words // w.S))
    p = max(1, min(w.K, psum_words, filter_words // (q * w.S)))
    while p * q * w.S > filter_words and q > 1:
        q -= 1
    return p, q


def _rs(
    w: Workload, spec: AcceleratorSpec, p: int, q: int, glb_words: float, n: int, e: int
) -> RowStationaryCounts:
    R = min(w.R, spec.rows)
    r_folds = math.ceil(w.R / spec.rows)
    sets = max(1, spec.rows // R) * max(1, spec.cols // e)
    tK = min(sets, math.ceil(w.K / p))
    tC = max(1, min(sets // tK, math.ceil(w.C / q)))
    k_passes = math.ceil(w.K / (p * tK))
    c_passes = math.ceil(w.C / (q * tC))
    strips = math.ceil(w.P / e)
    passes = w.N * k_passes * c_passes * strips * r_folds
    repeats = w.groups * w.time_steps
    macs = w.macs
    outputs = w.N * w.K * w.P * w.Q * repeats
    h_in, w_in = input_size(w)
    ifmap = w.N * w.C * h_in * w_in * repeats
    weights = w.K * w.C * w.R * w.S * w.groups
    rows_per_strip = (e - 1) * w.stride_h + w.R
    ifmap_glb = w.N * k_passes * strips * w.C * rows_per_strip * w_in * repeats
    filter_loads = weights * strips * w.time_steps
    psum_glb_reads = outputs * (c_passes - 1)
    psum_glb_writes = outputs * c_passes
    array = outputs * c_passes * (R - 1) + ifmap_glb * (min(R, e) - 1) + filter_loads * (e - 1)
    # Loop order: image block (N / n) > strip > filter pass > channel pass > image. The partial
    # sums of one filter pass (n images) stay in the global buffer when they fit, else they
    # spill to DRAM between channel passes; as much of a strip's ifmap rows as fits beside them
    # stays across filter passes; filters go to the PEs once per strip and image block unless
    # all of them fit on chip.
    psum_ws = n * p * tK * e * w.Q
    strip_ws = n * w.C * rows_per_strip * w_in
    spill = c_passes > 1 and psum_ws > glb_words
    dram_psum = outputs * (c_passes - 1) if spill else 0.0
    # What of the strip stays resident beside the partial sums is read once; the rest is read
    # again by every filter pass.
    resident = max(0.0, glb_words - min(psum_ws, glb_words))
    streamed = max(0.0, 1.0 - resident / strip_ws)
    dram_ifmap = ifmap * (1 + (k_passes - 1) * streamed)
    dram_filter = weights
    if weights > glb_words:
        dram_filter *= w.time_steps * math.ceil(w.N / n) * strips
    return RowStationaryCounts(
        compute_cycles=passes * p * q * w.S * w.Q * repeats,
        active_pes=min(sets, tK * tC) * R * e,
        macs=macs,
        rf=4.0 * macs,
        array=float(array),
        buffer_reads=float(ifmap_glb + psum_glb_reads),
        buffer_writes=float(psum_glb_writes + dram_ifmap),
        dram_ifmap=float(dram_ifmap),
        dram_filter=float(dram_filter),
        dram_ofmap=float(outputs + dram_psum),
        dram_psum_reads=float(dram_psum),
        p=p,
        q=q,
        sets=sets,
    )


def row_stationary(
    w: Workload, spec: AcceleratorSpec, act_bits: int, weight_bits: int
) -> RowStationaryCounts:
    """Row-stationary counts of ``w`` (all groups and time steps) on a spatial ``spec``.

    The global buffer is one memory (Eyeriss's 108 kB GLB is the sum of the spec's three
    buffers); ``p`` (filters interleaved per PE), ``q`` (channels interleaved per PE, within the
    filter spad) and the images of the batch that share one pass (any divisor of ``N``) are
    chosen, as Eyeriss's mapper does per layer, to minimize data-movement energy.
    """
    bits = max(act_bits, weight_bits)
    glb_words = spec.buffer_kb * 1024 * 8 * spec.buffer_active_fraction / bits
    p_max, q_max = _rf_tiling(spec, w)
    words = spec.rf_bytes * 8 // spec.word_bits
    filter_words = max(1, int(RF_SPLIT[1] * words / sum(RF_SPLIT)))
    table = spec.energy_table()
    best = None
    blocks = [n for n in range(1, w.N + 1) if w.N % n == 0]
    # Output rows per PE set: the widest set, or one for 2-4 strips, whose ifmap rows may fit the
    # buffer where the widest strip's do not.
    widest = min(w.P, spec.cols)
    widths = sorted({min(widest, math.ceil(w.P / k)) for k in range(1, 5)})
    for n, e, q in itertools.product(blocks, widths, range(1, q_max + 1)):
        for p in range(1, p_max + 1):
            if p * q * w.S > filter_words:
                continue  # the filter spad holds p filters x q channels of one row
            c = _rs(w, spec, p, q, glb_words, n, e)
            dram = c.dram_ifmap + c.dram_filter + c.dram_ofmap + c.dram_psum_reads
            on_chip = (c.buffer_reads + c.buffer_writes) * table.buffer
            key = (dram * table.dram + on_chip + c.array * table.array, c.compute_cycles)
            if best is None or key < best[0]:
                best = (key, c)
    assert best is not None
    return best[1]
