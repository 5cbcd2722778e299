"""Output-, weight- and input-stationary dataflows on a systolic array, in SCALE-Sim's closed form.

A layer is the matrix product ``ofmap[Px, K] = ifmap[Px, W] @ filter[W, K]`` with ``Px`` the output
pixels (``N * P * Q``), ``W`` the convolution window (``R * S * C``) and ``K`` the filters.
SCALE-Sim (Samajdar et al., ISPASS 2020) maps two of the three dimensions onto the array's
``rows x cols`` (the spatial dimensions ``Sr``, ``Sc``) and streams the third over time ``T``:

====  ==========  ==========  ========
flow  Sr          Sc          T
====  ==========  ==========  ========
os    Px          K           W
ws    W           K           Px
is    W           Px          K
====  ==========  ==========  ========

The operands are folded ``ceil(Sr / rows) * ceil(Sc / cols)`` times. Each fold is skewed into and
out of the array, which costs (from the demand matrices SCALE-Sim builds, e.g.
``scalesim/compute/systolic_compute_os.py``)::

    os:     rows + cols + T - 2          cycles per fold
    ws, is: 2 * rows + cols + T - 2      (the extra ``rows`` load the stationary operand)

and reads the SRAMs (counted over the unpadded part of each fold, as SCALE-Sim counts them)::

    os: ifmap = col_folds * T * Sr   filter = row_folds * T * Sc
        ofmap writes = Sr * Sc + folds * (rows + cols)   (SCALE-Sim 3.0 adds rows + cols per fold)
    ws: ifmap = col_folds * T * Sr   filter = Sr * Sc     ofmap writes = row_folds * T * Sc
    is: ifmap = Sr * Sc              filter = col_folds * Sr * T   ofmap writes = row_folds * Sc * T

These equal the shapes and counts of SCALE-Sim 3.0.0's demand matrices exactly (tested on a grid of
layers against values recorded from it, ``tests/hardware/scalesim_reference.json``).
"""

from __future__ import annotations

import dataclasses
import math

from modelzip.core.errors import ConfigError
from modelzip.core.workload import Workload


@dataclasses.dataclass(frozen=True)
class SystolicCounts:
    """Cycles, folds and SRAM accesses of one matrix product on a systolic array (no stalls)."""

    dataflow: str
    Sr: int
    Sc: int
    T: int
    row_folds: int
    col_folds: int
    cycles_per_fold: int
    compute_cycles: int
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int
    macs: int
    mapping_efficiency: float  # mean fraction of PEs holding data, over folds

    @property
    def folds(self) -> int:
        """Number of folds (array-sized tiles) the product is split into."""
        return self.row_folds * self.col_folds

    def utilization(self, pes: int) -> float:
        """MACs over PE-cycles: ``macs / (pes * compute_cycles)``."""
        return self.macs / (pes * self.compute_cycles) if self.compute_cycles else 0.0

    def scaled(self, times: int) -> SystolicCounts:
        """The same product run ``times`` times (groups, time steps): counts add, ratios stay."""
        if times == 1:
            return self
        return dataclasses.replace(
            self,
            row_folds=self.row_folds,
            col_folds=self.col_folds * times,
            compute_cycles=self.compute_cycles * times,
            ifmap_reads=self.ifmap_reads * times,
            filter_reads=self.filter_reads * times,
            ofmap_writes=self.ofmap_writes * times,
            macs=self.macs * times,
        )


def spatiotemporal(ofmap_px: int, window: int, filters: int, dataflow: str) -> tuple[int, int, int]:
    """``(Sr, Sc, T)`` of a dataflow, as in SCALE-Sim's ``calc_spatio_temporal_params``."""
    if dataflow == "os":
        return ofmap_px, filters, window
    if dataflow == "ws":
        return window, filters, ofmap_px
    if dataflow == "is":
        return window, ofmap_px, filters
    raise ConfigError(f"dataflow={dataflow!r} is not a systolic dataflow; choose one of os, ws, is")


def systolic_gemm(
    ofmap_px: int, window: int, filters: int, rows: int, cols: int, dataflow: str
) -> SystolicCounts:
    """SCALE-Sim's compute cycles, folds and SRAM accesses for ``ofmap_px x window x filters``.

    Parameters
    ----------
    ofmap_px, window, filters
        Output pixels (rows of the ifmap operand matrix), window size (its columns) and number of
        filters (columns of the filter operand matrix).
    rows, cols
        Systolic array height and width.
    dataflow
        ``"os"``, ``"ws"`` or ``"is"``.
    """
    if min(ofmap_px, window, filters, rows, cols) < 1:
        raise ConfigError(
            f"a systolic product needs positive sizes; got ofmap_px={ofmap_px}, window={window}, "
            f"filters={filters}, rows={rows}, cols={cols}"
        )
    Sr, Sc, T = spatiotemporal(ofmap_px, window, filters, dataflow)
    row_folds = math.ceil(Sr / rows)
    col_folds = math.ceil(Sc / cols)
    folds = row_folds * col_folds
    if dataflow == "os":
        per_fold = rows + cols + T - 2
        ifmap = col_folds * T * Sr
        filt = row_folds * T * Sc
        ofmap = Sr * Sc + folds * (rows + cols)
    elif dataflow == "ws":
        per_fold = 2 * rows + cols + T - 2
        ifmap = col_folds * T * Sr
        filt = Sr * Sc
        ofmap = row_folds * T * Sc
    else:
        per_fold = 2 * rows + cols + T - 2
        ifmap = Sr * Sc
        filt = col_folds * Sr * T
        ofmap = row_folds * Sc * T
    return SystolicCounts(
        dataflow=dataflow,
        Sr=Sr,
        Sc=Sc,
        T=T,
        row_folds=row_folds,
        col_folds=col_folds,
        cycles_per_fold=per_fold,
        compute_cycles=folds * per_fold,
        ifmap_reads=ifmap,
        filter_reads=filt,
        ofmap_writes=ofmap,
        macs=ofmap_px * window * filters,
        mapping_efficiency=(Sr * Sc) / (folds * rows * cols),
    )


def gemm_dims(w: Workload) -> tuple[int, int, int, int]:
    """``(ofmap_px, window, filters, repeats)`` of a workload's loop nest.

    Each group and each time step is a separate product, as SCALE-Sim runs each channel of a
    depthwise layer (``DP`` in the topology file) as a layer of its own.
    """
    ofmap_px = w.N * w.P * w.Q
    window = w.R * w.S * w.C
    return ofmap_px, window, w.K, w.groups * w.time_steps


def systolic_counts(w: Workload, rows: int, cols: int, dataflow: str) -> SystolicCounts:
    """SCALE-Sim counts of a whole workload (all groups and time steps) on a systolic array."""
    ofmap_px, window, filters, repeats = gemm_dims(w)
    return systolic_gemm(ofmap_px, window, filters, rows, cols, dataflow).scaled(repeats)
