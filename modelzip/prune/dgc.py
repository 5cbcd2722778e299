"""Sparse gradient communication for ``DistributedDataParallel``: top-k with error feedback.

Deep Gradient Compression (Lin et al., ICLR 2018; after Strom 2015 and Aji & Heafield 2017):
each process adds the gradient to its residual, sends only the ``k = ⌈ratio·n⌉`` entries of
largest magnitude (values and int32 indices) and keeps the rest as the residual for the next
step, so no gradient is lost, only delayed. With momentum correction, the residual accumulates the
momentum-corrected velocity ``u ← m·u + g`` instead of the raw gradient. Every rank decodes all
ranks' entries and averages them, so the replicas stay identical.

``state.bytes_sent`` counts what this process transmits (an all-gather sends each payload once to
each other rank); ``state.dense_bytes`` the ring all-reduce of float32 it replaces;
``state.payload_bytes`` and ``state.fp32_bytes`` one rank's sparse and float32 gradients.

>>> state = TopKHookState(ratio=0.01)
>>> ddp_model.register_comm_hook(state, topk_hook)
"""

import math  # no "from __future__ import annotations": DDP checks the hook annotations

import torch
import torch.distributed as dist

__all__ = ["TopKHookState", "topk_hook"]


class TopKHookState:
    """Residuals (and velocities) per gradient bucket, and byte counts.

    Parameters
    ----------
    ratio:
        Fraction of each bucket's entries sent per step, in (0, 1].
    momentum:
        DGC's momentum correction factor (0: plain error feedback); use it with an optimizer
        without momentum, as the paper does.
    """

    def __init__(
        self,
        process_group: dist.ProcessGroup | None = None,
        ratio: float = 0.01,
        momentum: float = 0.0,
    ):
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio={ratio!r} is out of range; allowed (0, 1]")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum!r} is out of range; allowed [0, 1)")
        self.process_group, self.ratio, self.momentum = process_group, ratio, momentum
        self.residuals: dict[int, torch.Tensor] = {}
        self.velocities: dict[int, torch.Tensor] = {}
        self.bytes_sent = 0
        self.dense_bytes = 0
        self.payload_bytes = 0  # one rank's values and indices, whatever the group size
        self.fp32_bytes = 0
        self.calls = 0


def topk_hook(state: TopKHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Top-k sparsified gradients with error feedback (Deep Gradient Compression)."""
    grad = bucket.buffer()
    g = grad.detach().float()
    key = bucket.index()
    if state.momentum:
        u = state.velocities.get(key, torch.zeros_like(g)) * state.momentum + g
        state.velocities[key] = u
        g = u
    acc = g + state.residuals.get(key, torch.zeros_like(g))
    n = acc.numel()
    k = max(1, math.ceil(state.ratio * n))
    index = acc.abs().topk(k, sorted=False).indices
    values = acc[index]
    residual = acc.clone()
    residual[index] = 0
    state.residuals[key] = residual
    if state.momentum:
        # Momentum factor masking: the sent entries' velocity restarts, as in DGC.
        state.velocities[key][index] = 0
    world = dist.get_world_size(state.process_group)
    all_values = [torch.empty_like(values) for _ in range(world)]
    index32 = index.to(torch.int32)  # 4-byte indices on the wire
    all_index = [torch.empty_like(index32) for _ in range(world)]
    dist.all_gather(all_values, values, group=state.process_group)
    dist.all_gather(all_index, index32, group=state.process_group)
    total = torch.zeros_like(g)
    for v, i in zip(all_values, all_index, strict=True):
        total.index_add_(0, i.long(), v)
    state.bytes_sent += (world - 1) * k * (4 + 4)
    state.dense_bytes += math.ceil(2 * (world - 1) / world * 4 * n)
    state.payload_bytes += k * (4 + 4)
    state.fp32_bytes += 4 * n
    state.calls += 1
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result((total / world).to(grad.dtype))
    return fut
