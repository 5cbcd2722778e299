"""Top-k gradient sparsification with error feedback as a DDP hook: two processes over gloo."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from ddp_harness import train_with_hooks

from modelzip.prune.dgc import TopKHookState, topk_hook

SETTINGS = {"fp32": None, "all": (1.0, 0.0), "top10": (0.1, 0.0), "top10_momentum": (0.1, 0.5)}


def _setup(rank: int, name: str):
    setting = SETTINGS[name]
    if setting is None:  # plain all-reduce; the state only counts what a hook would send
        return TopKHookState(ratio=1.0), None
    return TopKHookState(ratio=setting[0], momentum=setting[1]), topk_hook


def test_invalid_ratio_is_refused():
    with pytest.raises(ValueError, match=r"ratio=0.*\(0, 1\]"):
        TopKHookState(ratio=0.0)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_topk_hook_trains_in_sync_and_sends_a_tenth(tmp_path):
    r = train_with_hooks(tmp_path / "ddp.json", list(SETTINGS), _setup, 60)
    # Sending everything is the plain all-reduce average.
    torch.testing.assert_close(
        torch.tensor(r["all"]["params"]), torch.tensor(r["fp32"]["params"]), rtol=1e-4, atol=1e-5
    )
    n = 10 * 32 + 32 + 32 * 2 + 2
    for name in ("top10", "top10_momentum"):
        assert r[name]["in_sync"], name
        assert r[name]["last"] < 0.7 * r[name]["first"], (name, r[name])
        per_step = r[name]["bytes"] / 60
        assert per_step <= (0.1 * n + 1) * 8, per_step  # k values and k int32 indices
        assert r[name]["dense"] == 60 * 4 * n
