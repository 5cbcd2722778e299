"""DRAM reads of a systolic layer as SCALE-Sim's read buffers make them.

SCALE-Sim 3.0 (``scalesim/memory/read_buffer_estimate_bw.py``, the buffer it uses with
``InterfaceBandwidth: CALC``) serves the array's SRAM requests in the order of its demand matrices
and counts a DRAM read for every request that misses. Its buffer of ``E`` words is split into 100
sets of ``n = floor(E / 100)`` words; a miss joins the set being filled; a request hits when its
address is in the filling set or in one of the last completed sets of the active part
(``A = 100 * active_fraction`` sets). When the ``A``-th set completes, the oldest ``100 - A`` sets
are dropped at once. With SCALE-Sim's (and our presets') active fraction of one half, that is a
buffer emptied every ``A * n`` misses: between two flushes every distinct address is fetched
once. So the DRAM reads of an operand are a function of its request stream alone::

    reads = sum over epochs of (distinct addresses of the epoch),
    an epoch ending at the (A * n)-th distinct address since the last flush.

This module builds the request stream exactly as SCALE-Sim's compute modules do (operand
matrices with its addresses, folds column-outer, skewed or flipped per dataflow), then counts the
misses with one vectorised pass per epoch. An operand whose distinct addresses fit in ``A * n``
words is read once without building anything. A stream longer than ``MAX_STREAM`` requests is
simulated over its first ``MAX_STREAM`` requests, and at least six buffer-fulls (whole folds), and
the miss rate extrapolated to the whole: the folds repeat one pattern, so the rate of the prefix is
the rate of the whole. Active fractions
other than one half are modelled as the same flush at ``A * n`` (SCALE-Sim keeps the newest
``2A - 100`` sets instead of none); the presets use one half.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np

MAX_STREAM = 400_000  # requests simulated per operand (at least 6 flushes) before extrapolating


def set_capacity(buffer_kb: float, word_bits: int, active_fraction: float) -> int:
    """Words the read buffer holds between flushes: ``int(100 f) * floor(E / 100)``."""
    elems = math.floor(buffer_kb * 1024 * 8 / word_bits)
    per_set = max(1, elems // 100)
    return max(1, int(round(active_fraction, 2) * 100) * per_set)  # as SCALE-Sim rounds it


class Operands:
    """SCALE-Sim's operand matrices of one product, computed by the block on demand.

    The ifmap matrix (``N P Q`` x ``R S C``) holds the address of each window element
    (``((n H + row) W + col) C + channel``, channel fastest, ``-1`` past the edge, as
    ``scalesim/compute/operand_matrix.py`` computes it); the filter matrix (``R S C`` x ``K``)
    holds distinct addresses.
    """

    def __init__(self, geometry: tuple[int, ...]) -> None:
        self.N, self.C, self.K, self.H, self.W, self.R, self.S, self.P, self.Q, sh, sw = geometry
        self.sh, self.sw = sh, sw
        self.px, self.win = self.N * self.P * self.Q, self.R * self.S * self.C

    def ifmap(self, px: slice, win: slice) -> np.ndarray:
        n, rest = np.divmod(np.arange(self.px)[px], self.P * self.Q)
        p, q = np.divmod(rest, self.Q)
        r, rest2 = np.divmod(np.arange(self.win)[win], self.S * self.C)
        s, c = np.divmod(rest2, self.C)
        row = p[:, None] * self.sh + r[None, :]
        col = q[:, None] * self.sw + s[None, :]
        addr = ((n[:, None] * self.H + row) * self.W + col) * self.C + c[None, :]
        return np.where((row < self.H) & (col < self.W), addr, -1)

    def filter(self, win: slice, k: slice) -> np.ndarray:
        w = np.arange(self.win)[win]
        return w[:, None] * self.K + np.arange(self.K)[k][None, :]

    def ifmap_valid_fraction(self) -> float:
        """Share of the ifmap matrix inside the input (SCALE-Sim's ceil output size can run a
        window past the edge)."""

        def share(out: int, kernel: int, stride: int, size: int) -> float:
            starts = np.arange(out)[:, None] * stride + np.arange(kernel)[None, :]
            return float((starts < size).mean())

        return share(self.P, self.R, self.sh, self.H) * share(self.Q, self.S, self.sw, self.W)


def _skewed(block: np.ndarray) -> np.ndarray:
    """The requests of a fold whose column ``j`` starts ``j`` cycles late, cycle by cycle."""
    t, c = block.shape
    out = np.full((t + c - 1, c), -1, dtype=block.dtype)
    jj = np.broadcast_to(np.arange(c), (t, c))
    ii = np.arange(t)[:, None] + jj
    out[ii, jj] = block
    return out.ravel()


def _folds(sr: int, sc: int, rows: int, cols: int, order: str) -> Iterator[tuple[int, int]]:
    rf, cf = math.ceil(sr / rows), math.ceil(sc / cols)
    if order == "row_outer":
        return ((fc, fr) for fr in range(rf) for fc in range(cf))
    return ((fc, fr) for fc in range(cf) for fr in range(rf))


def fold_requests(
    ops: Operands, dataflow: str, operand: str, rows: int, cols: int, order: str = "col_outer"
) -> Iterator[np.ndarray]:
    """The requests of one operand, fold by fold, in the order of SCALE-Sim's demand matrices.

    Per fold (``scalesim/compute/systolic_compute_{os,ws,is}.py``): os streams the ifmap rows of
    the fold transposed and the filter columns, both skewed; ws skews the ifmap columns of the
    fold and reads its filter block bottom row first; is reads its ifmap block bottom row first
    and skews the transposed filter rows. ``order="row_outer"`` swaps the fold loops (a mapping
    choice of our own).
    """
    sr, sc = {"os": (ops.px, ops.K), "ws": (ops.win, ops.K), "is": (ops.win, ops.px)}[dataflow]
    every = slice(None)
    for fc, fr in _folds(sr, sc, rows, cols, order):
        r = slice(fr * rows, min((fr + 1) * rows, sr))
        c = slice(fc * cols, min((fc + 1) * cols, sc))
        if dataflow == "os":
            if operand == "ifmap":
                yield _skewed(ops.ifmap(r, every).T)
            else:
                yield _skewed(ops.filter(every, c))
        elif dataflow == "ws":
            if operand == "ifmap":
                yield _skewed(ops.ifmap(every, r))
            else:
                yield ops.filter(r, c)[::-1].ravel()
        elif operand == "ifmap":  # is: window elements r of output pixels c
            yield ops.ifmap(c, r).T[::-1].ravel()
        else:
            yield _skewed(ops.filter(r, every).T)


def flush_misses(stream: np.ndarray, capacity: int) -> int:
    """Requests of ``stream`` that miss a buffer emptied after every ``capacity`` misses."""
    stream = stream[stream >= 0]
    length = len(stream)
    if length == 0:
        return 0
    order = np.argsort(stream, kind="stable")
    ranked = stream[order]
    prev = np.full(length, -1, dtype=np.int64)
    same = ranked[1:] == ranked[:-1]
    prev[order[1:][same]] = order[:-1][same]
    total, start, chunk = 0, 0, 4 * capacity
    while start < length:
        end = min(length, start + chunk)
        # A request misses when its address was last asked for before this epoch began.
        misses = np.cumsum(prev[start:end] < start)
        if misses[-1] >= capacity:
            last = int(np.searchsorted(misses, capacity))
            total += capacity
            chunk = max(2 * (last + 1), capacity)
            start += last + 1
        elif end == length:
            total += int(misses[-1])
            break
        else:
            chunk *= 2
    return total


def _distinct_span(size: int, out: int, kernel: int, stride: int) -> int:
    starts = np.arange(out)[:, None] * stride + np.arange(kernel)[None, :]
    return int(np.unique(starts[starts < size]).size)


@functools.lru_cache(maxsize=4096)
def scalesim_reads(
    geometry: tuple[int, ...], rows: int, cols: int, dataflow: str, order: str,
    ifmap_capacity: int, filter_capacity: int,
) -> tuple[float, float]:  # fmt: skip
    """DRAM words read for the ifmap and the filter of one product (one group, one step).

    ``geometry`` is ``(N, C, K, H, W, R, S, P, Q, stride_h, stride_w)``.
    """
    ops = Operands(geometry)
    distinct_ifmap = ops.N * ops.C * _distinct_span(ops.H, ops.P, ops.R, ops.sh)
    distinct_ifmap *= _distinct_span(ops.W, ops.Q, ops.S, ops.sw)
    distinct_filter = ops.K * ops.win
    result = [float(distinct_ifmap), float(distinct_filter)]
    sr, sc = {"os": (ops.px, ops.K), "ws": (ops.win, ops.K), "is": (ops.win, ops.px)}[dataflow]
    rf, cf = math.ceil(sr / rows), math.ceil(sc / cols)
    # Requests of the whole stream (SCALE-Sim's SRAM reads; the ifmap's past the edge dropped):
    # the operand matrix times the folds of the other dimension, whatever the loop order.
    sweeps = {
        ("os", "ifmap"): cf, ("ws", "ifmap"): cf, ("is", "ifmap"): 1,
        ("os", "filter"): rf, ("ws", "filter"): 1, ("is", "filter"): cf,
    }  # fmt: skip
    for i, (operand, cap) in enumerate((("ifmap", ifmap_capacity), ("filter", filter_capacity))):
        if result[i] <= cap:
            continue  # it fits: every word is fetched once
        overlapping = operand == "ifmap" and (ops.sh < ops.R or ops.sw < ops.S)
        if sweeps[(dataflow, operand)] == 1 and not overlapping:
            continue  # one pass over distinct words (an FC layer's weights): each fetched once
        size = ops.px * ops.win if operand == "ifmap" else ops.win * ops.K
        valid = ops.ifmap_valid_fraction() if operand == "ifmap" else 1.0
        everything = sweeps[(dataflow, operand)] * size * valid
        # Enough of the stream to see the buffer flush several times, whole folds.
        budget = max(MAX_STREAM, 6 * cap)
        taken, simulated = [], 0
        for block in fold_requests(ops, dataflow, operand, rows, cols, order):
            taken.append(block)
            simulated += int((block >= 0).sum())
            if simulated >= budget:
                break
        misses = flush_misses(np.concatenate(taken), cap)
        result[i] = max(result[i], misses * max(1.0, everything / simulated))
    return result[0], result[1]
