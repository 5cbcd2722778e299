"""The tensorized (TT-MVM) engine inside whole-model estimates: a TT / HT layer's stages back to
back, their intermediates kept in working SRAM.

A tensor-train or hierarchical-Tucker layer reaches the hardware model as a chain of small
``matmul`` workloads (``NAME:0``, ``NAME:1``, ... or ``NAME:tt:i`` after a TT conv's spatial
part, with a ``module_type`` of ``TT*`` / ``HT*``). On a plain array each stage is an independent
product: its output goes to DRAM and the next stage reads it back. An accelerator with a TT engine
(``AcceleratorSpec.tt_engine``, TIE: Deng et al., ISCA 2019) keeps the cores on chip and swaps two
groups of working SRAM between stages, so an intermediate that fits the smaller of the ifmap and
ofmap buffers (their active parts) costs a buffer write and read instead of a DRAM round trip;
the stall cycles are recomputed with the traffic that is left.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from modelzip.core.workload import Workload
from modelzip.hardware.energy import EnergyTable
from modelzip.hardware.result import LayerEstimate
from modelzip.hardware.spec import AcceleratorSpec

TENSORIZED_TYPES = ("TT", "HT")


def _chain_key(w: Workload) -> str | None:
    if w.op != "matmul" or not w.module_type.startswith(TENSORIZED_TYPES) or ":" not in w.name:
        return None
    return w.name.rsplit(":", 1)[0]


def tt_chains(workloads: Sequence[Workload]) -> list[range]:
    """Index ranges of consecutive stages of one tensorized layer (two or more stages)."""
    chains, start = [], 0
    keys = [_chain_key(w) for w in workloads]
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] is None or keys[i] != keys[start]:
            if keys[start] is not None and i - start > 1:
                chains.append(range(start, i))
            start = i
    return chains


def keep_intermediates_on_chip(
    layers: list[LayerEstimate],
    stages: Sequence[Workload],
    spec: AcceleratorSpec,
    table: EnergyTable,
    chain: range,
) -> None:
    """Replace the DRAM round trip of each intermediate of ``chain`` that fits working SRAM."""
    cap = min(spec.ifmap_sram_kb, spec.ofmap_sram_kb) * 1024 * spec.buffer_active_fraction
    for i in list(chain)[:-1]:
        w, x = stages[i], layers[i]
        size = w.N * w.K * w.time_steps * w.groups * x.act_bits / 8  # the intermediate, bytes
        if size > cap:
            continue
        for j, (write, read) in ((i, (size, 0.0)), (i + 1, (0.0, size))):
            y = layers[j]
            wr = min(write, y.dram_write_bytes)
            rd = min(read, y.dram_read_bytes)
            energy = dict(y.energy)
            energy["dram"] = max(0.0, energy["dram"] - (wr + rd) * 8 / spec.word_bits * table.dram)
            reads, writes = y.dram_read_bytes - rd, y.dram_write_bytes - wr
            stall = 0
            if spec.dram_bandwidth > 0 and y.stall_cycles:
                need = math.ceil((reads + writes) / spec.dram_bandwidth)
                stall = max(0, need - y.compute_cycles)
            layers[j] = dataclasses.replace(
                y,
                dram_read_bytes=reads,
                dram_write_bytes=writes,
                energy=energy,
                stall_cycles=stall,
                cycles=y.compute_cycles + stall,
            )
