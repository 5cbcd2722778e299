"""Top-k gradient sparsification with error feedback as a DDP hook: two processes over gloo."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from modelzip.prune.dgc import TopKHookState, topk_hook

SETTINGS = {"fp32": None, "all": (1.0, 0.0), "top10": (0.1, 0.0), "top10_momentum": (0.1, 0.5)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 10, generator=g)
        y = (x[:, :3].sum(1) > 0).long()
        for name, setting in SETTINGS.items():
            torch.manual_seed(1)
            model = nn.parallel.DistributedDataParallel(
                nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
            )
            state = TopKHookState(ratio=1.0)
            if setting is not None:
                state = TopKHookState(ratio=setting[0], momentum=setting[1])
                model.register_comm_hook(state, topk_hook)
            opt = torch.optim.SGD(model.parameters(), lr=0.2)
            shard = slice(rank * 128, (rank + 1) * 128)
            losses = []
            for _ in range(60):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[shard]), y[shard])
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            gathered = [torch.empty_like(params) for _ in range(world)]
            dist.all_gather(gathered, params)
            results[name] = {
                "first": losses[0],
                "last": losses[-1],
                "bytes": state.bytes_sent,
                "dense": state.dense_bytes,
                "in_sync": all(torch.equal(gathered[0], t) for t in gathered),
                "params": params.tolist(),
            }
    finally:
        # Both ranks leave together: a rank tearing gloo down while its peer is still in a
        # collective aborts the peer ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    # Skip the interpreter's teardown: gloo's and the DDP reducer's C++ threads, destroyed at
    # exit, sometimes abort ("terminate called without an active exception") after the work is
    # done and written, which would fail the test for nothing it checks.
    os._exit(0)


def test_invalid_ratio_is_refused():
    with pytest.raises(ValueError, match=r"ratio=0.*\(0, 1\]"):
        TopKHookState(ratio=0.0)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_topk_hook_trains_in_sync_and_sends_a_tenth(tmp_path):
    out = tmp_path / "ddp.json"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    r = json.loads(out.read_text())
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
