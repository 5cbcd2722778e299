"""Tensorized engine: a tensor-train (TT) matrix-vector product as a sequence of small GEMMs.

A TT layer (Novikov et al., NeurIPS 2015) stores a ``K x C`` weight as cores
``G_k[r_{k-1}, n_k, m_k, r_k]`` with ``C = prod n_k``, ``K = prod m_k`` and ``r_0 = r_d = 1``.
TIE (Deng et al., ISCA 2019) computes ``y = W x`` core by core, from the last to the first,
without ever rebuilding ``W``: stage ``k`` is one GEMM

    rows  = batch * prod_{i<k} n_i * prod_{i>k} m_i
    inner = n_k * r_k
    out   = m_k * r_{k-1}
    MACs_k = rows * inner * out

followed by a reshape of its output into the next stage's input. TIE keeps the intermediate tensor
in two groups of working SRAM that swap roles between stages, so the reshape costs one buffer
write and one read, not a DRAM round trip. :func:`estimate_tt` models that: each stage is a
workload of its own (so any accelerator and dataflow can run it), and the spec is run with its
TT engine on (:mod:`.tt_engine`), so an intermediate that fits in the spec's ifmap and ofmap
buffers has its DRAM traffic replaced by buffer accesses. A TT or HT layer of a compressed model
gets the same treatment in :func:`~modelzip.hardware.estimate` on a spec with ``tt_engine``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from modelzip.core.errors import ConfigError
from modelzip.core.workload import Workload
from modelzip.hardware.estimate import estimate
from modelzip.hardware.presets import get_accelerator
from modelzip.hardware.result import Estimate
from modelzip.hardware.spec import AcceleratorSpec


def _check(in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int]) -> None:
    d = len(in_modes)
    if d < 1 or len(out_modes) != d:
        raise ConfigError(
            f"in_modes and out_modes need the same length >= 1; got {d}, {len(out_modes)}"
        )
    if len(ranks) != d + 1 or ranks[0] != 1 or ranks[-1] != 1:
        raise ConfigError(
            f"tt ranks need d + 1 = {d + 1} entries starting and ending with 1; got {list(ranks)}"
        )
    if min(*in_modes, *out_modes, *ranks) < 1:
        raise ConfigError("tt modes and ranks must be positive")


def tt_workloads(
    name: str,
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    ranks: Sequence[int],
    batch: int = 1,
    weight_bits: int = 8,
    act_bits: int = 8,
) -> list[Workload]:
    """The ``d`` GEMM stages of a TT matrix-vector product, last core first (TIE's order)."""
    _check(in_modes, out_modes, ranks)
    d = len(in_modes)
    stages = []
    for k in reversed(range(d)):
        rows = batch * math.prod(in_modes[:k]) * math.prod(out_modes[k + 1 :])
        inner = in_modes[k] * ranks[k + 1]
        out = out_modes[k] * ranks[k]
        params = ranks[k] * in_modes[k] * out_modes[k] * ranks[k + 1]
        stages.append(
            Workload(
                f"{name}:core{k}",
                "matmul",
                "TTCore",
                N=rows,
                C=inner,
                K=out,
                params=params,
                weight_bits=weight_bits,
                act_bits=act_bits,
                weight_bytes=params * weight_bits // 8,
                input_bytes=rows * inner * act_bits // 8,
                output_bytes=rows * out * act_bits // 8,
            )
        )
    return stages


def estimate_tt(
    name: str,
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    ranks: Sequence[int],
    accelerator: str | AcceleratorSpec = "tpu",
    dataflow: str | None = None,
    batch: int = 1,
    weight_bits: int = 8,
    act_bits: int = 8,
    **opts: Any,
) -> Estimate:
    """Estimate a TT layer stage by stage on ``accelerator`` with its TT engine on: the
    intermediates stay in working SRAM when they fit."""
    spec = get_accelerator(accelerator).replace(tt_engine=True)
    stages = tt_workloads(name, in_modes, out_modes, ranks, batch, weight_bits, act_bits)
    return estimate(stages, spec, dataflow, **opts)
