"""estimate(): MACs, cycles, energy by level, DRAM traffic, stalls, quantized and sparse engines."""

from __future__ import annotations

import json
import math

import pytest

from modelzip.core.errors import ConfigError
from modelzip.core.workload import Workload
from modelzip.hardware import AcceleratorSpec, SparseSupport, estimate, get_accelerator
from modelzip.hardware.memory import operand_words
from modelzip.hardware.systolic import systolic_counts


def conv(name: str = "conv", N: int = 1, bits: int = 8, **kw: float) -> Workload:
    fields = dict(N=N, C=16, K=32, R=3, S=3, P=14, Q=14, H=16, W=16)
    fields.update(kw)
    return Workload(name, "conv", "Conv2d", weight_bits=bits, act_bits=bits, **fields)


def fc(N: int = 1, bits: int = 8, **kw: float) -> Workload:
    return Workload(
        "fc", "linear", "Linear", N=N, C=256, K=128, weight_bits=bits, act_bits=bits, **kw
    )


MODEL = [
    conv("c1"),
    conv("dw", C=1, K=1, groups=16),
    conv("s2", stride_h=2, stride_w=2, P=7, Q=7),
    fc(),
    Workload("rnn", "recurrent", "LSTM", N=1, C=96, K=256, time_steps=5, weight_bits=8, act_bits=8),
]
PRESETS = ["tpu", "eyeriss", "os", "stripes", "loom", "bitfusion", "xnor", "cambricon-x"]


@pytest.mark.parametrize("name", PRESETS)
def test_macs_equal_the_models_and_result_is_json(name: str) -> None:
    est = estimate(MODEL, name)
    assert [x.macs for x in est.layers] == [w.macs for w in MODEL]
    assert est.macs == sum(w.macs for w in MODEL)
    data = json.loads(json.dumps(est.to_dict()))
    assert data["energy_unit"] in ("pJ", "normalized")
    assert set(data["totals"]["energy"]) == {"mac", "rf", "array", "buffer", "dram"}
    assert est.table_rows()[-1]["layer"] == "TOTAL"
    for x in est.layers:
        assert x.cycles >= x.compute_cycles > 0
        assert 0 < x.utilization <= 1.0 + 1e-9
        assert all(v >= 0 for v in x.energy.values())
    assert est.area_mm2["total"] > 0 and est.latency_s > 0


@pytest.mark.parametrize("flow", ["os", "ws", "is"])
def test_dense_compute_cycles_are_scalesims(flow: str) -> None:
    spec = get_accelerator("os")
    est = estimate(MODEL, spec, dataflow=flow)
    for w, x in zip(MODEL, est.layers, strict=True):
        assert x.compute_cycles == systolic_counts(w, spec.rows, spec.cols, flow).compute_cycles


def test_dram_traffic_at_least_unique_sizes() -> None:
    w = conv()
    for flow in ("os", "ws", "is"):
        x = estimate([w], "os", flow).layers[0]
        ifmap, filt, ofmap = operand_words(w)
        assert x.dram_read_bytes >= ifmap + filt
        assert x.dram_write_bytes >= ofmap


def test_small_buffers_refetch() -> None:
    big = conv(C=64, K=256, P=28, Q=28, H=30, W=30)
    roomy = estimate([big], "os", "ws").layers[0]
    tight_spec = get_accelerator("os").replace(ifmap_sram_kb=4.0, ofmap_sram_kb=4.0)
    tight = estimate([big], tight_spec, "ws").layers[0]
    assert tight.dram_bytes > roomy.dram_bytes


def test_fc_weight_reuse_grows_with_batch() -> None:
    r1 = estimate([fc(N=1)], "tpu").layers[0].weight_reuse
    r16 = estimate([fc(N=16)], "tpu").layers[0].weight_reuse
    assert r1 == pytest.approx(1.0)
    assert r16 == pytest.approx(16.0)
    c = estimate([conv()], "tpu").layers[0].weight_reuse
    assert c == pytest.approx(14 * 14)


def test_bandwidth_limit_adds_stalls() -> None:
    spec = get_accelerator("os").replace(dram_bandwidth=0.5)
    x = estimate([fc()], spec).layers[0]
    assert x.stall_cycles > 0 and x.cycles == x.compute_cycles + x.stall_cycles
    assert estimate([fc()], spec, stalls=False).layers[0].stall_cycles == 0


@pytest.mark.parametrize("name", PRESETS)
def test_energy_monotone_in_bit_width(name: str) -> None:
    spec = get_accelerator(name)
    energies = [estimate([conv(bits=b)], spec).total_energy for b in (1, 2, 4, 8, 16)]
    assert energies == sorted(energies)


@pytest.mark.parametrize("pe", ["stripes", "loom", "bitfusion"])
def test_cycles_monotone_in_bits_for_bit_scalable_pes(pe: str) -> None:
    cycles = [estimate([conv(bits=b)], pe).cycles for b in (2, 4, 8, 16)]
    assert cycles == sorted(cycles) and cycles[0] < cycles[-1]


def test_stripes_speedup_is_word_over_precision() -> None:
    w = conv(C=64, K=64, P=28, Q=28, H=30, W=30)
    spec = get_accelerator("stripes")
    base = estimate([w], spec.replace(pe="bit_parallel"), bits={"conv": (16, 16)}).cycles
    serial = estimate([w], spec, bits={"conv": (16, 8)}).cycles
    assert base / serial == pytest.approx(2.0, rel=0.05)


def test_pipelined_folds_pay_fill_once() -> None:
    w = conv(C=64, K=64, P=28, Q=28, H=30, W=30)
    systolic = get_accelerator("stripes").replace(pipelined_folds=False)
    per_fold = estimate([w], systolic).layers[0]
    once = estimate([w], systolic.replace(pipelined_folds=True)).layers[0]
    fill = systolic.rows + systolic.cols - 2
    assert per_fold.compute_cycles - once.compute_cycles == (per_fold.folds - 1) * fill
    assert get_accelerator("stripes").pipelined_folds and get_accelerator("loom").pipelined_folds
    assert not get_accelerator("bitfusion").pipelined_folds  # a systolic array


def test_bitfusion_scales_by_fusion_group() -> None:
    spec = get_accelerator("bitfusion")
    w = conv(C=256, K=64, P=28, Q=28, H=30, W=30)
    c8, c4, c2 = (estimate([w], spec, bits={"conv": (b, b)}).cycles for b in (8, 4, 2))
    assert c8 / c4 == pytest.approx(4.0, rel=0.1)
    assert c8 / c2 == pytest.approx(16.0, rel=0.3)


def test_xnor_binary_layer_is_cheap() -> None:
    w = conv(bits=1)
    assert estimate([w], "xnor").total_energy < estimate([conv(bits=8)], "xnor").total_energy


@pytest.mark.parametrize("name", ["cambricon-x", "eyeriss-sparse"])
def test_dense_model_on_sparse_engine_costs_no_less(name: str) -> None:
    sparse = get_accelerator(name)
    dense = sparse.replace(sparse=SparseSupport())
    e_sparse, e_dense = estimate(MODEL, sparse), estimate(MODEL, dense)
    assert e_sparse.total_energy >= e_dense.total_energy
    assert e_sparse.cycles >= e_dense.cycles


def test_energy_and_cycles_fall_with_weight_sparsity() -> None:
    energies, cycles = [], []
    for s in (0.0, 0.25, 0.5, 0.75, 0.9):
        est = estimate([conv(C=64, weight_sparsity=s)], "cambricon-x")
        energies.append(est.total_energy)
        cycles.append(est.cycles)
    assert energies == sorted(energies, reverse=True)
    assert cycles == sorted(cycles, reverse=True)


def test_unstructured_sparsity_is_load_imbalanced() -> None:
    w = conv(C=64, weight_sparsity=0.75)
    un = estimate([w], "cambricon-x").cycles
    st = estimate([w], "cambricon-x", structured=True).cycles
    assert st < un


def test_dense_engine_ignores_sparsity() -> None:
    a = estimate([conv(weight_sparsity=0.0)], "os").total_energy
    b = estimate([conv(weight_sparsity=0.9)], "os").total_energy
    assert a == b


def test_activation_gating_and_compression() -> None:
    energies = [
        estimate([conv(bits=16, act_sparsity=s)], "eyeriss-sparse").total_energy
        for s in (0.0, 0.3, 0.6, 0.9)
    ]
    assert energies == sorted(energies, reverse=True)
    dram = [
        estimate([conv(bits=16, act_sparsity=s)], "eyeriss-sparse").layers[0].dram_bytes
        for s in (0.0, 0.6)
    ]
    assert dram[1] < dram[0]


def test_output_speculation() -> None:
    spec = get_accelerator("os").replace(sparse=SparseSupport(output_speculation=True))
    off = estimate([conv()], spec, output_sparsity=0.0)
    on = estimate([conv()], spec, output_sparsity={"conv": 0.6})
    assert on.total_energy < off.total_energy and on.cycles < off.cycles


def test_rs_refused_on_systolic_and_unknown_options() -> None:
    with pytest.raises(ConfigError, match="spatial"):
        estimate(MODEL, "tpu", dataflow="rs")
    with pytest.raises(ConfigError, match="not allowed"):
        estimate(MODEL, "tpu", dataflow="xx")
    with pytest.raises(ConfigError, match="unknown option 'bitz'"):
        estimate(MODEL, "tpu", bitz=1)


def test_cast_wider_layers() -> None:
    w = conv(bits=32)
    cast = estimate([w], "tpu").layers[0]
    passes = estimate([w], "tpu", cast_wider=False).layers[0]
    assert (cast.weight_bits, cast.act_bits) == (8, 8)
    assert passes.compute_cycles > cast.compute_cycles


def test_embedding_has_no_macs() -> None:
    emb = Workload("emb", "embedding", "Embedding", N=8, C=1000, K=64, weight_bits=8, act_bits=8)
    x = estimate([emb], "tpu").layers[0]
    assert x.macs == 0 and x.cycles == 0 and x.energy["dram"] > 0


def test_eyeriss_row_stationary_uses_rf_most() -> None:
    est = estimate([conv(bits=16, N=4)], "eyeriss")
    e = est.energy
    assert est.energy_unit == "normalized"
    assert e["rf"] > e["mac"]
    assert math.isclose(e["mac"], est.macs, rel_tol=1e-9)
    assert estimate([conv(bits=16)], "eyeriss", dataflow="ws").layers[0].dataflow == "ws"


def test_spec_object_accepted() -> None:
    spec = AcceleratorSpec(rows=8, cols=8, ifmap_sram_kb=8, filter_sram_kb=8, ofmap_sram_kb=8)
    assert estimate([conv()], spec).accelerator == "custom"
