"""What modelzip's native static int8 ops (the first-layer conv of :mod:`.int8_small_conv`, the
linear of :mod:`.int8_static_gemm`) share where their kernel does not run (ARM,
``MODELZIP_NATIVE=0``, no VNNI): PyTorch's engine on the same weight, prepacked on first use,
and a float input quantized on its grid as the kernel would have.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import numpy as np
import torch


class FallbackWeight(Protocol):
    """A native op's packed weight: how to make PyTorch's engine's, and that weight once made."""

    make_fallback: Any
    fallback: Any


def quantize_on_grid(x: torch.Tensor, in_grid: tuple[float, int, int]) -> torch.Tensor:
    """``x`` as a quint8 tensor on ``in_grid`` ``(scale, zero, top code)``: PyTorch's
    ``quantize_per_tensor``, clamped at the top code where it is below 255."""
    in_scale, in_zero, qmax = in_grid
    with warnings.catch_warnings():  # quantized-tensor constructors warn of deprecation
        warnings.simplefilter("ignore")
        qx = torch.quantize_per_tensor(x, in_scale, in_zero, torch.quint8)
    return qx if qmax == 255 else torch.clamp(qx, max=(qmax - in_zero) * in_scale)


def inverse_scale(in_scale: float) -> float:
    """The multiplier a kernel quantizes with: PyTorch inverts the float32 scale."""
    return 1.0 / float(np.float32(in_scale))


def engine_op(
    ops: tuple[Any, Any], qx: torch.Tensor, packed: FallbackWeight, scale: float, zero: int,
    relu: bool,
) -> torch.Tensor:  # fmt: skip
    """``ops`` (PyTorch's op and its ``_relu`` twin) on ``packed``'s engine weight."""
    if packed.make_fallback is None:
        raise RuntimeError("the native int8 kernel does not run here and no fallback weight given")
    if packed.fallback is None:
        packed.fallback = packed.make_fallback()
    return (ops[1] if relu else ops[0])(qx, packed.fallback, scale, zero)
