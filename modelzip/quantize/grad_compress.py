"""Compressed gradient communication while training: :class:`TrainConfig` ``grad_compress``.

:func:`compressed_ddp` wraps a model in ``DistributedDataParallel`` with one of the gradient
communication hooks (TernGrad, QSGD, 1-bit SGD with error feedback: :mod:`.ddp_hooks`; Deep
Gradient Compression's top-k: :mod:`modelzip.prune.dgc`). In a single process it makes a
one-process gloo group, so the hook really quantizes (and, for the error-feedback schemes, delays)
every gradient, as it would on a cluster; under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) it
joins the launched group; a group that is already initialised is used as it is.

:func:`modelzip.train.train` loads this module by name (run-time wiring, as the method registry
does), since the training loop sits below the families in the package's layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from modelzip.core.errors import ConfigError
from modelzip.prune.dgc import TopKHookState, topk_hook
from modelzip.quantize.ddp_hooks import QuantHookState, onebit_hook, qsgd_hook, terngrad_hook

__all__ = ["GRAD_COMPRESSORS", "GradCompression", "compressed_ddp", "make_hook", "qsgd_levels"]

GRAD_COMPRESSORS = ("terngrad", "qsgd", "onebit", "dgc")


def qsgd_levels(bits: int) -> int:
    """QSGD's levels per sign ``s`` whose ``2s + 1`` codes fill ``bits`` bits (at least 1)."""
    return max(2 ** (bits - 1) - 1, 1)


def make_hook(
    scheme: str,
    process_group: dist.ProcessGroup | None = None,
    *,
    bits: int = 4,
    ratio: float = 0.01,
    seed: int = 0,
) -> tuple[QuantHookState | TopKHookState, Any]:
    """``(state, hook)`` for ``ddp_model.register_comm_hook(state, hook)``."""
    if scheme == "dgc":
        return TopKHookState(process_group, ratio=ratio), topk_hook
    hooks = {"terngrad": terngrad_hook, "qsgd": qsgd_hook, "onebit": onebit_hook}
    if scheme not in hooks:
        raise ConfigError(f"grad_compress={scheme!r} is not allowed; choose one of "
                          f"{list(GRAD_COMPRESSORS)}")  # fmt: skip
    return QuantHookState(process_group, levels=qsgd_levels(bits), seed=seed), hooks[scheme]


@dataclasses.dataclass
class GradCompression:
    """The running hook's state and the group's shape, for the training report."""

    scheme: str
    state: QuantHookState | TopKHookState
    rank: int
    world_size: int

    def report(self, steps: int) -> dict[str, Any]:
        """What ran and the bytes per optimizer step: one rank's compressed gradients against
        the same gradients in float32 (what an all-reduce would carry per rank)."""
        payload, dense = self.state.payload_bytes, self.state.fp32_bytes
        per = max(steps, 1)
        return {
            "scheme": self.scheme,
            "rank": self.rank,
            "world_size": self.world_size,
            "hook_calls": self.state.calls,
            "payload_bytes_per_step": payload / per,
            "fp32_bytes_per_step": dense / per,
            "ratio": dense / payload if payload else None,
        }


def _backend(scheme: str, device: torch.device) -> str:
    # The quantizing hooks pack their payload on the CPU, which only gloo carries; the top-k
    # hook keeps the gradient's device, so NCCL serves it on CUDA.
    return "nccl" if device.type == "cuda" and scheme == "dgc" else "gloo"


def _join_group(scheme: str, device: torch.device) -> bool:
    """Initialise the default group if none is; True when this call created it."""
    if dist.is_initialized():
        return False
    backend = _backend(scheme, device)
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):  # torchrun
        dist.init_process_group(backend, init_method="env://")
    else:
        # One process: an in-memory store, so no port is opened.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True


@contextlib.contextmanager
def compressed_ddp(
    model: nn.Module, scheme: str, *, bits: int = 4, ratio: float = 0.01, seed: int = 0
) -> Iterator[tuple[nn.Module, GradCompression]]:
    """``(ddp_model, handle)``: run the forward passes through ``ddp_model`` so that the
    backward passes average the gradients through the ``scheme`` hook."""
    if not dist.is_available():
        raise ConfigError("grad_compress needs torch.distributed, which this torch lacks")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    created = _join_group(scheme, device)
    try:
        state, hook = make_hook(scheme, None, bits=bits, ratio=ratio, seed=seed)
        ids = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        ddp.register_comm_hook(state, hook)
        handle = GradCompression(scheme, state, dist.get_rank(), dist.get_world_size())
        yield ddp, handle
    finally:
        if created:
            # Every rank reaches this point after the same number of steps; the barrier keeps
            # one rank from tearing gloo down while another is still in a collective.
            with contextlib.suppress(RuntimeError):
                dist.barrier()
            dist.destroy_process_group()
