"""What a layer run by the fused per-pixel kernel (``native/tt_conv.cpp``) needs: tiles of 16
output pixels, one per SIMD lane, and the conditions under which the kernel can run.

A fused layer subclasses the layer it runs (:class:`~modelzip.kernels.tt_conv.FusedTTConv2d`),
keeps its parameters, spec and gradients, and falls back to that layer's own forward wherever
the kernel cannot run. (A CP conv run the same way, its two ``1×1`` convs as 16-lane GEMMs,
measured no faster than oneDNN's: 11.5 against 12.2 ms, so it was not kept.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from modelzip.kernels._native import native, unavailable_reason

#: Output pixels per tile: the float32 lanes of one AVX-512 register.
LANES = 16


def tiles(
    H: int, W: int, P: int, Q: int, kernel: tuple[int, int], padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Per tile of 16 output pixels: each tap's input offset for lane 0 and its lane mask, the
    output offset and mask. With "same" geometry a tile runs over the flattened map (lanes are
    contiguous in the input for every tap); otherwise tiles stay within one output row."""
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    lanes = np.arange(LANES)
    bits = np.int64(1) << lanes
    if (P, Q) == (H, W):
        starts = [(f0, f0 + lanes) for f0 in range(0, P * Q, LANES)]
    else:
        starts = [(p * Q + q0, p * Q + q0 + lanes) for p in range(P) for q0 in range(0, Q, LANES)]
    tin, tmask, tout, tomask = [], [], [], []
    for f0, f in starts:
        ok = (f < P * Q) & (f // Q == f0 // Q) if (P, Q) != (H, W) else f < P * Q
        p, q = f // Q, f % Q
        tout.append(f0)
        tomask.append(int(np.sum(bits[ok])))
        row_in, row_mask = [], []
        for dy in range(kh):
            for dx in range(kw):
                ih, iw = p - ph + dy * dh, q - pw + dx * dw
                valid = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                row_in.append(int(ih[0]) * W + int(iw[0]))  # lane l reads this + l
                row_mask.append(int(np.sum(bits[valid])))
        tin.append(row_in)
        tmask.append(row_mask)

    def masks(m: list[Any]) -> torch.Tensor:  # 16-bit masks in int32 (the kernel's type)
        return torch.from_numpy(np.asarray(m, dtype=np.int64).astype(np.int32))

    return (torch.tensor(tin, dtype=torch.int64), masks(tmask),
            torch.tensor(tout, dtype=torch.int64), masks(tomask))  # fmt: skip


class FusedConv:
    """Mixin for a conv-like layer (``kernel_size``, ``stride``, ``padding``, ``dilation``,
    ``padding_mode``) that has a fused AVX-512 forward."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: Any
    dilation: tuple[int, int]
    padding_mode: str
    _tile_cache: dict[tuple[Any, ...], tuple[torch.Tensor, ...]]

    def fused_unavailable(self, x: torch.Tensor) -> str | None:
        """Why ``x`` would not take the fused kernel, or None when it would."""
        params = list(self.parameters())  # type: ignore[attr-defined]
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
            return "the fused kernel takes a 4-D float32 CPU tensor"
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
            return "the fused kernel needs float32 CPU weights"
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return "autograd: the fused kernel has no backward"
        if isinstance(self.padding, str) or self.stride != (1, 1) or self.padding_mode != "zeros":
            return "the fused kernel needs stride 1 and numeric zero padding"
        reason = unavailable_reason()
        if reason is None and native() is None:
            reason = "the AVX-512 extension did not build"
        return reason

    def _out_size(self, H: int, W: int) -> tuple[int, int]:
        (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
        return H + 2 * ph - dh * (kh - 1), W + 2 * pw - dw * (kw - 1)

    def _weights_key(self) -> tuple[Any, ...]:
        return tuple((p.data_ptr(), p._version) for p in self.parameters())  # type: ignore[attr-defined]

    def _tiles_for(
        self, H: int, W: int, kernel: Any, padding: Any, dilation: Any
    ) -> tuple[torch.Tensor, ...]:
        """:func:`tiles` for an ``H × W`` input, cached per geometry."""
        key = (H, W, tuple(kernel), tuple(padding), tuple(dilation))
        if key not in self._tile_cache:
            (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
            P, Q = H + 2 * ph - dh * (kh - 1), W + 2 * pw - dw * (kw - 1)
            self._tile_cache[key] = tiles(H, W, P, Q, kernel, padding, dilation)
        return self._tile_cache[key]


__all__ = ["LANES", "FusedConv", "tiles"]
