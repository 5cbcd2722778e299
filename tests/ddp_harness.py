"""Two processes over gloo train the same small DDP model with each of several communication
hooks; rank 0 writes, per hook, the first and last loss, the bytes the hook sent and whether the
ranks ended in sync. Shared by the quantized-gradient and the top-k sparsification tests."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

#: ``setup(rank, name) -> (state, hook or None)``; a module-level function of the test module,
#: so that the spawned workers can import it.
Setup = Callable[[int, str], tuple[Any, Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, names, setup: Setup, steps: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 10, generator=g)
        y = (x[:, :3].sum(1) > 0).long()
        for name in names:
            torch.manual_seed(1)
            model = nn.parallel.DistributedDataParallel(
                nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
            )
            state, hook = setup(rank, name)
            if hook is not None:
                model.register_comm_hook(state, hook)
            opt = torch.optim.SGD(model.parameters(), lr=0.2)
            shard = slice(rank * 128, (rank + 1) * 128)
            losses = []
            for _ in range(steps):
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


def train_with_hooks(out: Path, names: list[str], setup: Setup, steps: int) -> dict[str, Any]:
    """Run the two ranks and return rank 0's results by hook name."""
    mp.spawn(_worker, args=(2, free_port(), str(out), names, setup, steps), nprocs=2, join=True)
    return json.loads(out.read_text())
