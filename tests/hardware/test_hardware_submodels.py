"""Unit checks of the sub-models: DRAM loop orders, sparse effects, PE cycle factors, RS tiling."""

from __future__ import annotations

import pytest

from modelzip.core.workload import Workload
from modelzip.hardware import get_accelerator
from modelzip.hardware.eyeriss import row_stationary
from modelzip.hardware.memory import dram_traffic, operand_words
from modelzip.hardware.quantized import cycle_factor
from modelzip.hardware.sparse import lane_imbalance, rlc_factor

W = Workload("c", "conv", "Conv2d", N=1, C=64, K=128, R=3, S=3, P=28, Q=28, H=30, W=30,
             weight_bits=8, act_bits=8)  # fmt: skip


def test_roomy_buffers_move_each_operand_once() -> None:
    spec = get_accelerator("tpu")
    for flow in ("os", "ws", "is"):
        for order in ("col_outer", "row_outer"):
            t = dram_traffic(W, spec, flow, 8, 8, order)
            assert (t.ifmap_reads, t.filter_reads, t.ofmap_writes) == operand_words(W)
            assert t.psum_reads == 0


def test_loop_order_decides_what_is_refetched() -> None:
    spec = get_accelerator("os").replace(rows=8, cols=8, ifmap_sram_kb=4, filter_sram_kb=4)
    col = dram_traffic(W, spec, "os", 8, 8, "col_outer")
    row = dram_traffic(W, spec, "os", 8, 8, "row_outer")
    ifmap, filt, _ = operand_words(W)
    assert col.ifmap_reads > ifmap and row.filter_reads > filt


def test_psum_spill_and_scalesim_mode() -> None:
    spec = get_accelerator("os").replace(rows=8, cols=8, ofmap_sram_kb=0.5)
    t = dram_traffic(W, spec, "ws", 8, 8)
    _, _, ofmap = operand_words(W)
    folds = -(-W.C * 9 // 8)
    assert t.ofmap_writes == ofmap * folds and t.psum_reads == ofmap * (folds - 1)
    scalesim = dram_traffic(
        W, spec.replace(accumulate_in_buffer=False, ofmap_sram_kb=64), "ws", 8, 8
    )
    assert scalesim.ofmap_writes == ofmap * folds and scalesim.psum_reads == 0


def test_recurrent_weights_stay_when_they_fit() -> None:
    rnn = Workload("r", "recurrent", "LSTM", N=1, C=64, K=256, time_steps=10)
    roomy = dram_traffic(rnn, get_accelerator("tpu"), "ws", 8, 8)
    tight = dram_traffic(rnn, get_accelerator("os").replace(filter_sram_kb=8.0), "ws", 8, 8)
    assert roomy.filter_reads == 64 * 256
    assert tight.filter_reads == 64 * 256 * 10


def test_lane_imbalance_and_rlc() -> None:
    assert lane_imbalance(1.0, 100, 16, False) == 1.0
    assert lane_imbalance(0.5, 100, 16, True) == 1.0
    assert 1.0 < lane_imbalance(0.5, 100, 16, False) <= 2.0
    assert lane_imbalance(0.5, 100, 16, False) > lane_imbalance(0.5, 10000, 16, False)
    assert rlc_factor(0.0, 16, 5) == pytest.approx(21 / 16)
    assert rlc_factor(0.9, 16, 5) < 0.2


def test_cycle_factors() -> None:
    stripes, loom, fusion = (get_accelerator(n) for n in ("stripes", "loom", "bitfusion"))
    assert cycle_factor(stripes, 16, 8) == pytest.approx(0.5)
    assert cycle_factor(loom, 8, 8) == pytest.approx(0.25)
    assert cycle_factor(fusion, 8, 8) == 1.0 and cycle_factor(fusion, 16, 16) == 4.0
    assert cycle_factor(fusion, 2, 2) == pytest.approx(1 / 16)
    tpu = get_accelerator("tpu")
    assert cycle_factor(tpu, 4, 4) == 1.0 and cycle_factor(tpu, 16, 8) == 2.0


def test_row_stationary_counts() -> None:
    spec = get_accelerator("eyeriss")
    rs = row_stationary(W, spec, 16, 16)
    assert rs.macs == W.macs
    assert rs.compute_cycles >= W.macs / spec.pes
    assert 0 < rs.active_pes <= spec.pes
    assert rs.p * rs.q * W.S <= 224
    ifmap, filt, ofmap = operand_words(W)
    assert rs.dram_ifmap >= ifmap and rs.dram_filter >= filt and rs.dram_ofmap >= ofmap
