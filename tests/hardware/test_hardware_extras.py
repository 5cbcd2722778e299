"""Mapping search, tensorized (TT) workloads, roofline and the SCALE-Sim file readers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from modelzip.core.errors import ConfigError
from modelzip.core.workload import Workload
from modelzip.hardware import (
    estimate,
    get_accelerator,
    spec_from_scalesim_cfg,
    workloads_from_topology_csv,
)
from modelzip.hardware.mapping import mapping_space, search_mapping
from modelzip.hardware.roofline import ridge_point, roofline
from modelzip.hardware.systolic import systolic_counts
from modelzip.hardware.tensorized import estimate_tt, tt_workloads

W = Workload(
    "conv",
    "conv",
    "Conv2d",
    N=2,
    C=32,
    K=64,
    R=3,
    S=3,
    P=28,
    Q=28,
    H=30,
    W=30,
    weight_bits=8,
    act_bits=8,
)


@pytest.mark.parametrize("objective", ["energy", "latency"])
def test_search_is_no_worse_than_any_fixed_dataflow(objective: str) -> None:
    spec = get_accelerator("os").replace(rows=16, cols=32, ifmap_sram_kb=8, ofmap_sram_kb=8)
    best, est, candidates = search_mapping(W, spec, objective)
    assert len(candidates) == len(mapping_space(spec, ("os", "ws", "is"))) == 12
    for flow in ("os", "ws", "is"):
        fixed = estimate([W], spec, flow).layers[0]
        if objective == "energy":
            assert est.total_energy <= fixed.total_energy
        else:
            assert est.cycles <= fixed.cycles
    searched = estimate([W], spec, search=objective).layers[0]
    assert searched.mapping and searched.dataflow == best.dataflow


def test_search_on_eyeriss_and_bad_objective() -> None:
    assert estimate([W], "eyeriss", search="energy").layers[0].dataflow == "rs"
    with pytest.raises(ConfigError, match="objective"):
        search_mapping(W, get_accelerator("os"), "area")


def test_tt_stages_macs_and_savings() -> None:
    in_modes, out_modes, ranks = (4, 8, 8), (4, 4, 8), (1, 4, 4, 1)
    stages = tt_workloads("fc", in_modes, out_modes, ranks, batch=3)
    assert len(stages) == 3
    expected = 0
    for k in range(3):
        rows = 3 * math.prod(in_modes[:k]) * math.prod(out_modes[k + 1 :])
        expected += rows * in_modes[k] * ranks[k + 1] * out_modes[k] * ranks[k]
    assert sum(s.macs for s in stages) == expected
    assert expected < 3 * 256 * 128  # cheaper than the dense 256 -> 128 layer at batch 3
    assert sum(s.params for s in stages) == 4 * 4 * 4 + 4 * 8 * 4 * 4 + 4 * 8 * 8
    one = tt_workloads("fc", (256,), (128,), (1, 1), batch=3)
    assert one[0].macs == 3 * 256 * 128


def test_tt_intermediates_stay_in_working_sram() -> None:
    args = ("fc", (4, 8, 8), (4, 4, 8), (1, 4, 4, 1))
    plain = estimate(tt_workloads(*args), "os")
    tie = estimate_tt(*args, accelerator="os")
    assert tie.dram_read_bytes < plain.dram_read_bytes
    assert tie.total_energy < plain.total_energy
    with pytest.raises(ConfigError, match="ranks"):
        tt_workloads("x", (4, 4), (4, 4), (2, 2, 1))


def test_roofline() -> None:
    spec = get_accelerator("os").replace(dram_bandwidth=4.0)
    fc = Workload("fc", "linear", "Linear", N=1, C=512, K=512, weight_bits=8, act_bits=8)
    points = roofline(estimate([W, fc], spec), spec)
    assert ridge_point(spec) == spec.pes / 4.0
    assert points[1].bound == "memory"  # a batch-1 FC layer reuses no weight
    assert points[0].intensity > points[1].intensity
    assert all(p.achieved <= spec.pes for p in points)


def test_scalesim_readers(tmp_path: Path) -> None:
    topo = tmp_path / "net.csv"
    topo.write_text(
        "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
        "Num Filter, Strides,\n"
        "Conv1, 16, 16, 3, 3, 8, 12, 2,\n"
        "DP_conv, 10, 10, 3, 3, 6, 1, 1,\n"
        "Conv3, 7, 7, 1, 1, 4, 4, 1, 2:4\n"
    )
    layers = workloads_from_topology_csv(topo)
    assert [w.name for w in layers] == ["Conv1", "DP_conv", "Conv3"]
    assert (layers[0].P, layers[0].Q) == (8, 8)  # SCALE-Sim's ceil((16 - 3 + 2) / 2)
    assert (layers[1].groups, layers[1].C) == (6, 1)
    assert layers[2].weight_sparsity == 0.5
    gemm = tmp_path / "gemm.csv"
    gemm.write_text("Layer, M, N, K,\nfc1, 16, 100, 300,\n")
    (g,) = workloads_from_topology_csv(gemm)
    assert (g.N, g.K, g.C, g.macs) == (16, 100, 300, 16 * 100 * 300)
    cfg = tmp_path / "arch.cfg"
    cfg.write_text(
        "[general]\nrun_name = demo\n[architecture_presets]\nArrayHeight: 16\nArrayWidth: 8\n"
        "IfmapSramSzkB: 64\nFilterSramSzkB: 64\nOfmapSramSzkB: 32\nDataflow : is\n"
        "Bandwidth : 10\n[run_presets]\nInterfaceBandwidth: USER\n"
    )
    spec = spec_from_scalesim_cfg(cfg)
    assert (spec.name, spec.rows, spec.cols, spec.dataflow, spec.dram_bandwidth) == (
        "demo",
        16,
        8,
        "is",
        10.0,
    )
    est = estimate(layers, spec)
    want = systolic_counts(layers[0], 16, 8, "is").compute_cycles
    assert est.layers[0].compute_cycles == want


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such"):
        workloads_from_topology_csv(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Layer name, H, W, R, S, C, K, stride,\nc, 3, 3, 5, 5, 1, 1, 1,\n")
    with pytest.raises(ConfigError, match="larger than the ifmap"):
        workloads_from_topology_csv(bad)
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[general]\nrun_name = x\n")
    with pytest.raises(ConfigError, match="not a SCALE-Sim config"):
        spec_from_scalesim_cfg(cfg)


def test_cli_estimate(tmp_path: Path) -> None:
    import json
    from argparse import Namespace

    from modelzip.hardware import cli_estimate, render_table

    topo = tmp_path / "net.csv"
    topo.write_text("Layer, M, N, K,\nfc1, 16, 100, 300,\nfc2, 16, 10, 100,\n")
    out = cli_estimate({"model_or_file": str(topo), "accelerator": "tpu", "dataflow": "os"})
    assert out["accelerator"] == "tpu" and out["dataflow"] == "os"
    assert [r["layer"] for r in out["table"]] == ["fc1", "fc2", "TOTAL"]
    assert len(out["roofline"]) == 2
    json.dumps(out)
    assert "energy in pJ" in render_table(out)
    ns = Namespace(model_or_file="model.pt", accelerator="eyeriss", dataflow=None, topology=None,
                   scalesim_config=None, search="latency")  # fmt: skip
    via_ns = cli_estimate(ns, workloads=[W])
    assert via_ns["energy_unit"] == "normalized" and via_ns["layers"][0]["dataflow"] == "rs"
    with pytest.raises(ConfigError, match="needs layers"):
        cli_estimate({"model_or_file": "model.pt"})


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, modelzip.hardware; print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "False"
