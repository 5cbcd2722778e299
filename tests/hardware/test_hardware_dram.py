"""DRAM reads and writes against recorded SCALE-Sim 3.0.0 runs; bandwidth stalls and the roofline.

``scalesim_dram_reference.json`` holds SCALE-Sim's own DRAM counts (full runs of its memory
system, ``InterfaceBandwidth: CALC``), written by ``benchmarks/hardware.py
--write-dram-reference``: conv and GEMM layers, os / ws / is, on buffers that hold the operands
(``roomy``), some of them (``mid``) and almost none (``tight``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from modelzip.core.workload import Workload
from modelzip.hardware import estimate, get_accelerator, roofline
from modelzip.hardware.buffer_sim import flush_misses, scalesim_reads, set_capacity
from modelzip.hardware.memory import dram_traffic, input_size
from modelzip.hardware.scalesim_io import spec_from_scalesim_cfg, workloads_from_topology_csv

REF = json.loads((Path(__file__).parent / "scalesim_dram_reference.json").read_text())
CFG = """[general]
run_name = t
[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: {ifmap_kb}
FilterSramSzkB: {filter_kb}
OfmapSramSzkB: {ofmap_kb}
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Dataflow : {dataflow}
Bandwidth : 10
"""


def _layers(tmp: Path) -> dict[tuple[str, str], Workload]:
    conv = tmp / "conv.csv"
    head = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
    conv.write_text(
        head
        + "Num Filter, Strides,\n"
        + "".join(", ".join(map(str, r)) + ",\n" for r in REF["conv"])
    )
    gemm = tmp / "gemm.csv"
    gemm.write_text(
        "Layer, M, N, K,\n" + "".join(", ".join(map(str, r)) + ",\n" for r in REF["gemm"])
    )
    out = {("conv", w.name): w for w in workloads_from_topology_csv(conv)}
    out.update({("gemm", w.name): w for w in workloads_from_topology_csv(gemm)})
    return out


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Workload]:
    return _layers(tmp_path_factory.mktemp("topo"))


def _spec(cfg: dict, tmp: Path):
    path = tmp / f"{cfg['name']}-{cfg['dataflow']}.cfg"
    path.write_text(CFG.format(**cfg))
    return spec_from_scalesim_cfg(path)


def test_grid_covers_what_the_issue_asks(layers) -> None:
    rows = REF["rows"]
    assert REF["scalesim_version"] == "3.0.0"
    assert {r["kind"] for r in rows} == {"conv", "gemm"}
    assert {r["cfg"]["dataflow"] for r in rows} == {"os", "ws", "is"}
    fits, spills = 0, 0
    for r in rows:
        w = layers[(r["kind"], r["layer"])]
        cap = set_capacity(r["cfg"]["ifmap_kb"], 8, 0.5)
        h, wi = input_size(w)
        unique = w.N * w.C * h * wi * w.groups
        fits += unique <= cap
        spills += unique > cap
    assert fits >= 20 and spills >= 20  # buffers that do and do not hold the working set


@pytest.mark.parametrize(
    "ref",
    REF["rows"],
    ids=[f"{r['cfg']['name']}-{r['cfg']['dataflow']}-{r['layer']}" for r in REF["rows"]],
)
def test_dram_matches_scalesim(ref: dict, layers, tmp_path: Path) -> None:
    spec = _spec(ref["cfg"], tmp_path)
    w = layers[(ref["kind"], ref["layer"])]
    t = dram_traffic(w, spec, ref["cfg"]["dataflow"], 8, 8)
    for ours, key in (
        (t.ifmap_reads, "ifmap_dram_reads"),
        (t.filter_reads, "filter_dram_reads"),
        (t.ofmap_writes, "ofmap_dram_writes"),
    ):
        assert ours == pytest.approx(ref[key], rel=0.10), key
    # And through estimate(): bytes are words (SCALE-Sim's words are one byte).
    est = estimate([w], spec).layers[0]
    theirs = ref["ifmap_dram_reads"] + ref["filter_dram_reads"]
    assert est.dram_read_bytes == pytest.approx(theirs, rel=0.10)
    assert est.dram_write_bytes == pytest.approx(ref["ofmap_dram_writes"], rel=0.10)


def test_flush_buffer_counts() -> None:
    # A buffer of 3 words emptied after every 3 misses: 1 2 3 | 1 2 3 | ... all miss; with 4
    # words, 1 2 3 then hits until the 4th distinct address.
    stream = np.array([1, 2, 3, 1, 2, 3, 4, 1, 2])
    assert flush_misses(stream, 3) == 3 + 3 + 3  # epochs {1,2,3} {1,2,3} {4,1,2}
    assert flush_misses(stream, 4) == 4 + 2  # {1,2,3,4} then {1,2}
    assert flush_misses(stream, 100) == 4
    assert flush_misses(np.array([-1, -1]), 3) == 0


def test_refetch_grows_as_the_buffer_shrinks() -> None:
    geometry = (1, 64, 40, 11, 11, 3, 3, 9, 9, 1, 1)
    reads = [scalesim_reads(geometry, 8, 8, "ws", "col_outer", cap, 10**9)[0] for cap in
             (10**6, 4000, 1000, 200)]  # fmt: skip
    assert reads[0] == 11 * 11 * 64
    assert reads == sorted(reads) and reads[-1] > 3 * reads[0]


# ---- bandwidth stalls and the roofline ----


def conv() -> Workload:
    return Workload(
        "c", "conv", "Conv2d", N=1, C=64, K=64, R=3, S=3, P=28, Q=28, H=30, W=30,
        weight_bits=8, act_bits=8,
    )  # fmt: skip


def test_presets_have_published_bandwidths() -> None:
    assert get_accelerator("tpu").dram_bandwidth == pytest.approx(30e9 / 700e6)
    assert get_accelerator("eyeriss").dram_bandwidth == pytest.approx(2.4)
    for name in ("os", "stripes", "cambricon-x", "cnvlutin"):
        assert get_accelerator(name).dram_bandwidth > 0


def test_stalls_appear_below_the_demand_and_vanish_above() -> None:
    spec = get_accelerator("os")
    free = estimate([conv()], spec.replace(dram_bandwidth=0.0)).layers[0]
    demand = free.dram_bytes / free.compute_cycles  # bytes per cycle the layer needs
    below = estimate([conv()], spec.replace(dram_bandwidth=demand / 2)).layers[0]
    above = estimate([conv()], spec.replace(dram_bandwidth=demand * 2)).layers[0]
    assert below.stall_cycles > 0
    assert below.cycles == pytest.approx(2 * free.dram_bytes / demand, rel=0.01)
    assert above.stall_cycles == 0 and above.cycles == free.compute_cycles
    assert estimate([conv()], spec, stalls=False).layers[0].stall_cycles == 0


def test_roofline_can_say_memory() -> None:
    spec = get_accelerator("os")
    fc = Workload("fc", "linear", "Linear", N=1, C=4096, K=4096, weight_bits=16, act_bits=16)
    est = estimate([conv(), fc], spec)
    points = {p.name: p for p in roofline(est, spec)}
    assert points["fc"].bound == "memory"  # batch-1 FC: every weight used once
    assert points["c"].bound == "compute"
    assert est.layers[1].stall_cycles > 0
    assert points["fc"].attainable < spec.pes
    # A memory-bound layer achieves at most what the bandwidth allows.
    assert points["fc"].achieved <= points["fc"].attainable * 1.001


def test_recurrent_and_grouped_layers_scale() -> None:
    spec = get_accelerator("os")
    w = Workload("g", "conv", "Conv2d", N=1, C=8, K=8, R=3, S=3, P=14, Q=14, H=16, W=16)
    one = dram_traffic(w, spec, "os", 16, 16)
    four = dram_traffic(dataclasses.replace(w, groups=4), spec, "os", 16, 16)
    assert four.ifmap_reads == 4 * one.ifmap_reads and four.filter_reads == 4 * one.filter_reads
    # Recurrent steps: every step streams its inputs and outputs; the weights are fetched once
    # while they fit in the filter buffer, and once per step when they do not.
    cell = Workload("r", "linear", "Linear", N=1, C=256, K=256, R=1, S=1, P=1, Q=1, H=1, W=1)
    big = dataclasses.replace(spec, filter_sram_kb=1024)  # 128 kB of 16-bit weights fit
    once = dram_traffic(cell, big, "os", 16, 16)
    steps = dram_traffic(dataclasses.replace(cell, time_steps=10), big, "os", 16, 16)
    assert (
        steps.ifmap_reads == 10 * once.ifmap_reads and steps.ofmap_writes == 10 * once.ofmap_writes
    )
    assert steps.filter_reads == once.filter_reads
    tiny = dataclasses.replace(spec, filter_sram_kb=4)  # 128 kB of weights no longer fit
    small_once = dram_traffic(cell, tiny, "os", 16, 16)
    small_steps = dram_traffic(dataclasses.replace(cell, time_steps=10), tiny, "os", 16, 16)
    assert small_steps.filter_reads == 10 * small_once.filter_reads
