"""Compute cycles, folds and SRAM reads equal SCALE-Sim's on a grid of layers and arrays.

The reference values were recorded from SCALE-Sim 3.0.0's own demand matrices by
``benchmarks/hardware.py --write-test-reference`` (layer grid: odd sizes, stride 2 and 3,
depthwise, FC at batch 1, 2, 4 and 16; arrays 8x8 to 128x128 and non-square).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.core.errors import ConfigError
from modelzip.core.workload import Workload
from modelzip.hardware.systolic import systolic_counts, systolic_gemm

REFERENCE = json.loads((Path(__file__).parent / "scalesim_reference.json").read_text())
FIELDS = ("demand_rows", "folds", "ifmap_sram_reads", "filter_sram_reads", "ofmap_sram_writes")


def conv_workload(row: list) -> Workload:
    name, H, W, R, S, C, K, stride = row
    # SCALE-Sim's output size, ceil((H - R + stride) / stride): one more row than PyTorch's
    # floor((H - R) / stride) + 1 when the stride does not divide H - R.
    P, Q = -(-(H - R + stride) // stride), -(-(W - S + stride) // stride)
    if "DP" in name:  # SCALE-Sim runs each channel of a DP layer as its own layer
        return Workload(name, "conv", "Conv2d", 1, 1, K, R, S, P, Q, H, W, stride, stride, groups=C)
    return Workload(name, "conv", "Conv2d", 1, C, K, R, S, P, Q, H, W, stride, stride)


def gemm_workload(row: list) -> Workload:
    name, M, N, K = row
    return Workload(name, "linear", "Linear", N=M, C=K, K=N)


def reference_cases() -> list[tuple[Workload, dict, dict]]:
    """(workload, cfg, SCALE-Sim counts summed over the channels of a DP layer)."""
    convs = {row[0]: conv_workload(row) for row in REFERENCE["conv"]}
    gemms = {row[0]: gemm_workload(row) for row in REFERENCE["gemm"]}
    summed: dict[tuple, dict] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for r in REFERENCE["rows"]:
        base = r["layer"].split("Channel_")[0]
        cfg = r["cfg"]
        key = (r["kind"], base, cfg["rows"], cfg["cols"], cfg["dataflow"])
        for f in FIELDS:
            summed[key][f] += r[f]
    cases = []
    for (kind, name, rows, cols, dataflow), counts in sorted(summed.items()):
        w = (convs if kind == "conv" else gemms)[name]
        cases.append((w, {"rows": rows, "cols": cols, "dataflow": dataflow}, counts))
    return cases


CASES = reference_cases()


def test_grid_is_large_enough() -> None:
    layers = {w.name for w, _, _ in CASES}
    arrays = {(c["rows"], c["cols"]) for _, c, _ in CASES}
    assert len(layers) >= 30
    assert (8, 8) in arrays and (128, 128) in arrays
    assert {c["dataflow"] for _, c, _ in CASES} == {"os", "ws", "is"}
    assert any(w.groups > 1 for w, _, _ in CASES)
    assert {w.N for w, _, _ in CASES if w.op == "linear"} >= {1, 16}


@pytest.mark.parametrize(
    "w,cfg,ref",
    CASES,
    ids=[f"{w.name}-{c['rows']}x{c['cols']}-{c['dataflow']}" for w, c, _ in CASES],
)
def test_matches_scalesim(w: Workload, cfg: dict, ref: dict) -> None:
    got = systolic_counts(w, cfg["rows"], cfg["cols"], cfg["dataflow"])
    assert got.compute_cycles == ref["demand_rows"]
    assert got.folds == ref["folds"]
    assert got.ifmap_reads == ref["ifmap_sram_reads"]
    assert got.filter_reads == ref["filter_sram_reads"]
    assert got.ofmap_writes == ref["ofmap_sram_writes"]
    assert got.macs == w.macs


def test_invalid_sizes_refused() -> None:
    with pytest.raises(ConfigError, match="positive"):
        systolic_gemm(0, 3, 3, 8, 8, "os")
    with pytest.raises(ConfigError, match="os, ws, is"):
        systolic_gemm(3, 3, 3, 8, 8, "rs")


@settings(max_examples=200, deadline=None)
@given(
    px=st.integers(1, 3000),
    window=st.integers(1, 3000),
    filters=st.integers(1, 1000),
    rows=st.integers(1, 256),
    cols=st.integers(1, 256),
    flow=st.sampled_from(["os", "ws", "is"]),
)
def test_closed_form_invariants(
    px: int, window: int, filters: int, rows: int, cols: int, flow: str
) -> None:
    c = systolic_gemm(px, window, filters, rows, cols, flow)
    assert c.macs == px * window * filters
    assert c.folds * rows * cols >= c.Sr * c.Sc  # the folds cover the spatial dimensions
    assert c.compute_cycles >= c.folds * c.T  # every fold streams all of T
    assert 0.0 < c.utilization(rows * cols) <= 1.0
    assert 0.0 < c.mapping_efficiency <= 1.0
    # Every operand element is read at least once; the stationary one exactly once.
    assert c.ifmap_reads >= px * window and c.filter_reads >= window * filters
    stationary = {"os": c.ofmap_writes - c.folds * (rows + cols), "ws": c.filter_reads}
    stationary["is"] = c.ifmap_reads
    assert stationary[flow] == {"os": px * filters, "ws": window * filters, "is": px * window}[flow]
