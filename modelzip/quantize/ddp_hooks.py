"""Quantized gradient communication for ``DistributedDataParallel`` (gloo or any backend).

Each hook compresses its gradient bucket, all-gathers the compressed payloads (bit-packed codes
plus a few floats), decodes every rank's contribution and averages them:

* **TernGrad** (Wen et al. 2017): ``s·sign(g)·b``, ``b ~ Bernoulli(|g|/s)``, ``s = max|g|``
  per chunk of ``state.chunk`` values; unbiased, 2 bits per value.
* **QSGD** (Alistarh et al. 2017): ``‖g‖₂·sign(g)·ξ/s`` with ``ξ`` the stochastic rounding of
  ``s·|g|/‖g‖₂`` to ``{0, …, s}``, the norm taken per chunk (QSGD's bucketing, which bounds the
  variance); unbiased, ``ceil(log2(2s+1))`` bits per value.
* **1-bit SGD with error feedback** (Seide et al. 2014): ``c = g + e``; send ``sign(c)`` with the
  mean of the positive and of the negative entries; keep ``e = c − Q(c)`` for the next step.

``state.bytes_sent`` counts what this process transmits (for two processes, an all-gather sends
each payload once, as a ring all-reduce of ``n`` float32 values sends ``4n`` bytes);
``state.dense_bytes`` the float32 all-reduce it replaces; ``state.payload_bytes`` and
``state.fp32_bytes`` one rank's compressed and float32 gradients, whatever the group size.

>>> state = QuantHookState(process_group=None, levels=4)
>>> ddp_model.register_comm_hook(state, qsgd_hook)
"""

import math  # no "from __future__ import annotations": DDP checks the hook annotations
from collections.abc import Callable

import torch
import torch.distributed as dist

from modelzip.quantize.packing import pack_bits, unpack_bits
from modelzip.quantize.quantizer import stochastic_round

__all__ = ["QuantHookState", "onebit_hook", "qsgd_hook", "terngrad_hook"]


class QuantHookState:
    """What a hook keeps between steps: the group, RNG, residuals and byte counts."""

    def __init__(
        self,
        process_group: dist.ProcessGroup | None = None,
        levels: int = 4,
        seed: int = 0,
        chunk: int = 512,
    ):
        self.process_group = process_group
        self.levels, self.chunk = levels, chunk
        self.generator = torch.Generator().manual_seed(
            seed + (dist.get_rank() if dist.is_initialized() else 0)
        )
        self.residuals: dict[int, torch.Tensor] = {}
        self.bytes_sent = 0
        self.dense_bytes = 0
        # One rank's payload and its float32 gradients, whatever the group size (a one-process
        # group sends nothing, yet the report says what a step would send).
        self.payload_bytes = 0
        self.fp32_bytes = 0
        self.calls = 0


def _exchange(
    state: QuantHookState,
    grad: torch.Tensor,
    payload: torch.Tensor,
    scalars: torch.Tensor,
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.futures.Future[torch.Tensor]:
    """All-gather ``payload`` (uint8) and ``scalars`` (float32), decode each, return the mean."""
    world = dist.get_world_size(state.process_group)
    packs = [torch.empty_like(payload) for _ in range(world)]
    scales = [torch.empty_like(scalars) for _ in range(world)]
    dist.all_gather(packs, payload, group=state.process_group)
    dist.all_gather(scales, scalars, group=state.process_group)
    total = torch.zeros_like(grad)
    for p, s in zip(packs, scales, strict=True):
        total += decode(p, s).to(grad.dtype).reshape(grad.shape)
    n = grad.numel()
    # Each process sends its payload to the others once (all-gather); a ring all-reduce of
    # float32 sends 2·(W−1)/W·4n bytes.
    state.bytes_sent += (world - 1) * (payload.numel() + 4 * scalars.numel())
    state.dense_bytes += math.ceil(2 * (world - 1) / world * 4 * n)
    state.payload_bytes += payload.numel() + 4 * scalars.numel()
    state.fp32_bytes += 4 * n
    state.calls += 1
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(total / world)
    return fut


def _chunks(g: torch.Tensor, size: int) -> torch.Tensor:
    """``g`` as rows of ``size`` values (zero padded): each row gets its own scale, which bounds
    the variance of the stochastic quantizers (QSGD's bucketing)."""
    pad = (-g.numel()) % size
    return torch.cat([g, g.new_zeros(pad)]).reshape(-1, size)


def terngrad_hook(
    state: QuantHookState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """TernGrad: stochastic ternary gradients, scale ``max|g|`` per chunk of ``state.chunk``."""
    grad = bucket.buffer()
    g = grad.detach().float().cpu().reshape(-1)
    rows = _chunks(g, state.chunk)
    s = rows.abs().amax(dim=1)
    u = torch.rand(rows.shape, generator=state.generator)
    t = torch.sign(rows) * (u < rows.abs() / s.clamp_min(1e-30)[:, None]).float()
    payload = pack_bits((t + 1).long(), 2)

    def decode(p: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
        codes = unpack_bits(p, 2, rows.numel()).float().reshape(rows.shape)
        return ((codes - 1) * sc[:, None]).reshape(-1)[: g.numel()].to(grad.device)

    return _exchange(state, grad, payload, s, decode)


def qsgd_hook(state: QuantHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """QSGD with ``state.levels`` levels per sign and a norm per chunk of ``state.chunk``."""
    grad = bucket.buffer()
    g = grad.detach().float().cpu().reshape(-1)
    rows = _chunks(g, state.chunk)
    s = state.levels
    norm = rows.norm(dim=1)
    r = rows.abs() / norm.clamp_min(1e-30)[:, None] * s
    # r can exceed s by a rounding error when one entry holds the norm.
    xi = stochastic_round(r, state.generator).clamp(0, s)
    codes = (torch.sign(rows) * xi + s).long()  # in [0, 2s]
    bits = math.ceil(math.log2(2 * s + 1))
    payload = pack_bits(codes, bits)

    def decode(p: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
        codes = unpack_bits(p, bits, rows.numel()).float().reshape(rows.shape)
        return ((codes - s) * sc[:, None] / s).reshape(-1)[: g.numel()].to(grad.device)

    return _exchange(state, grad, payload, norm, decode)


def onebit_hook(
    state: QuantHookState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """1-bit SGD: signs plus the mean of each side, with the quantization error fed back."""
    grad = bucket.buffer()
    g = grad.detach().float().cpu()
    key = bucket.index()
    c = g + state.residuals.get(key, torch.zeros_like(g))
    pos = c >= 0
    mean_pos = c[pos].mean() if pos.any() else torch.zeros(())
    mean_neg = c[~pos].mean() if (~pos).any() else torch.zeros(())
    q = torch.where(pos, mean_pos, mean_neg)
    state.residuals[key] = c - q
    payload = pack_bits(pos.long(), 1)
    scalars = torch.stack([mean_pos, mean_neg]).float()

    def decode(p: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
        bits = unpack_bits(p, 1, g.numel()).bool()
        return torch.where(bits, sc[0], sc[1]).to(grad.device)

    return _exchange(state, grad, payload, scalars, decode)
