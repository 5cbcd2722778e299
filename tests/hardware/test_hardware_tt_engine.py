"""TT / HT layers of a compressed model on the TT engine (#22 item 3)."""

from __future__ import annotations

import pytest
import torch

import modelzip
from modelzip.core.counting import collect_workloads
from modelzip.hardware import estimate, get_accelerator
from modelzip.hardware.tt_engine import tt_chains
from modelzip.models import create
from modelzip.recipe import Recipe


def compressed(method: str) -> list:
    torch.manual_seed(0)
    model, x = create("lenet300"), torch.rand(1, 1, 28, 28)
    small, _ = modelzip.compress(
        model, Recipe.from_list([{"method": method, "rank": 8}]), sample=x, evaluate=False,
        measure=False, deploy=False,
    )  # fmt: skip
    return collect_workloads(small, x)


@pytest.mark.parametrize("method", ["tt", "ht"])
def test_tensorized_layers_run_on_the_tt_engine(method: str) -> None:
    ws = compressed(method)
    chains = tt_chains(ws)
    assert len(chains) == 3 and all(len(c) >= 2 for c in chains)  # fc1, fc2, fc3
    tie = get_accelerator("tie")
    plain = tie.replace(tt_engine=False)
    on, off = estimate(ws, tie), estimate(ws, plain)
    assert on.macs == off.macs and on.compute_cycles == off.compute_cycles
    assert on.dram_read_bytes + on.dram_write_bytes < 0.6 * (
        off.dram_read_bytes + off.dram_write_bytes
    )
    assert on.total_energy < off.total_energy
    for chain in chains:
        first, last = chain[0], chain[-1]
        # The layer's own input comes from DRAM and its output goes there; only the
        # intermediates between its stages stay on chip.
        assert on.layers[first].dram_read_bytes == off.layers[first].dram_read_bytes
        assert on.layers[last].dram_write_bytes == off.layers[last].dram_write_bytes
        assert on.layers[first].dram_write_bytes < off.layers[first].dram_write_bytes
        assert on.layers[last].dram_read_bytes < off.layers[last].dram_read_bytes


def test_dense_model_is_the_same_on_the_tt_engine() -> None:
    torch.manual_seed(0)
    ws = collect_workloads(create("lenet300"), torch.rand(1, 1, 28, 28))
    assert tt_chains(ws) == []
    tie = get_accelerator("tie")
    assert (
        estimate(ws, tie).to_dict()["totals"]
        == estimate(ws, tie.replace(tt_engine=False)).to_dict()["totals"]
    )


def test_intermediate_larger_than_working_sram_goes_to_dram() -> None:
    ws = compressed("tt")
    # 6 kB buffers, half active (3 kB): fc1's 40 x 112 intermediate (8960 bytes) cannot stay,
    # fc2's 40 x 30 (2400 bytes) can.
    small = get_accelerator("tie").replace(ifmap_sram_kb=6, filter_sram_kb=6, ofmap_sram_kb=6)
    on, off = estimate(ws, small), estimate(ws, small.replace(tt_engine=False))
    assert on.layers[0].dram_write_bytes == off.layers[0].dram_write_bytes
    assert on.layers[3].dram_write_bytes < off.layers[3].dram_write_bytes


def test_stalls_recomputed_with_the_traffic_left() -> None:
    ws = compressed("tt")
    slow = get_accelerator("tie").replace(dram_bandwidth=0.5)
    on, off = estimate(ws, slow), estimate(ws, slow.replace(tt_engine=False))
    assert off.stall_cycles > 0
    assert on.stall_cycles < off.stall_cycles
    assert all(x.cycles == x.compute_cycles + x.stall_cycles for x in on.layers)
