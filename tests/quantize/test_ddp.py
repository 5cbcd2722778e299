"""Quantized DDP communication hooks, run by two processes on localhost over gloo."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from ddp_harness import train_with_hooks

from modelzip.quantize.ddp_hooks import QuantHookState, onebit_hook, qsgd_hook, terngrad_hook

STEPS = 30
HOOKS = {"terngrad": terngrad_hook, "qsgd": qsgd_hook, "onebit": onebit_hook, "fp32": None}


def _setup(rank: int, name: str):
    return QuantHookState(levels=4, seed=rank), HOOKS[name]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_quantized_hooks_train_in_sync_and_send_fewer_bytes(tmp_path):
    results = train_with_hooks(tmp_path / "ddp.json", list(HOOKS), _setup, STEPS)
    for name in ("terngrad", "qsgd", "onebit"):
        r = results[name]
        assert r["in_sync"], name
        assert r["last"] < 0.7 * r["first"], (name, r)
    n = 10 * 32 + 32 + 32 * 2 + 2
    steps = STEPS
    # Payload per step: 2 bits (TernGrad), 4 bits (QSGD, 9 values), 1 bit (1-bit SGD), plus scales.
    for name, bits in (("terngrad", 2), ("qsgd", 4), ("onebit", 1)):
        per_step = results[name]["bytes"] / steps
        assert per_step <= n * bits / 8 + 64, (name, per_step)
        assert results[name]["dense"] == steps * 4 * n
