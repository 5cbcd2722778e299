"""A TT-conv layer run by one fused AVX-512 kernel (``native/tt_conv.cpp``).

:class:`~modelzip.decompose.tt.TTConv2d` computes its MAC-minimal order as a chain of batched
einsums over the whole feature map: each intermediate is as large as the input and each step
permutes it, so the chain runs memory-bound, several times slower per MAC than the dense conv
(``benchmarks/decompose.py``, 0.24 of the MAC reduction). The fused kernel runs the same
contraction 16 output pixels at a time, one pixel per SIMD lane, with every intermediate in cache
and every permutation of modes folded into the offset tables built here:

1. the spatial core as ``r₀`` filters over each input channel (masked loads give the padding);
2. the channel cores in groups, each group merged into one ``K × N`` matrix (the grouping with
   the fewest MACs per pixel, :func:`plan_groups`; merging is paid once per weight version);
3. the output channels plus bias, stored with the tile's lane mask.

It needs stride 1, zero padding, float32 on the CPU, AVX-512F, and no autograd; otherwise
(training, CUDA, strided convs) the layer runs :class:`TTConv2d`'s own forward, so it is a
drop-in, exact-to-float-rounding replacement anywhere.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modelzip.core.module import register_layer
from modelzip.decompose.tt import TTConv2d
from modelzip.kernels._native import native as native_kernels
from modelzip.kernels.fused_conv import FusedConv


def plan_groups(
    in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int]
) -> tuple[tuple[tuple[int, int], ...], int]:
    """The grouping of consecutive channel cores with the fewest MACs per pixel, and that count.

    Group ``[i, j)`` merges cores ``i … j-1`` into a ``(r_i·c_i…c_{j-1}) × (s_i…s_{j-1}·r_j)``
    matrix applied to ``s_1…s_{i-1} · c_j…c_d`` rows; all ``2^(d-1)`` groupings are tried.
    """
    c, s, r = list(in_modes), list(out_modes), list(ranks)
    d = len(c)

    def cost(groups: Sequence[tuple[int, int]]) -> int:
        return sum(
            math.prod(s[:i]) * math.prod(c[j:])  # rows
            * r[i] * math.prod(c[i:j])  # K
            * math.prod(s[i:j]) * r[j]  # N
            for i, j in groups
        )  # fmt: skip

    best: tuple[tuple[int, int], ...] | None = None
    for cuts in itertools.product((False, True), repeat=d - 1):
        bounds = [0] + [k + 1 for k, cut in enumerate(cuts) if cut] + [d]
        groups = tuple(itertools.pairwise(bounds))
        if best is None or cost(groups) < cost(best):
            best = groups
    assert best is not None
    return best, cost(best)


def _offsets(order: Sequence[str], sizes: dict[str, int], names: Sequence[str]) -> np.ndarray:
    """Offsets (in vectors) of each value of ``names`` (row-major) in a state laid out as
    ``order``."""
    strides, step = {}, 1
    for n in reversed(order):
        strides[n] = step
        step *= sizes[n]
    off = np.zeros([sizes[n] for n in names], dtype=np.int64)
    for axis, n in enumerate(names):
        shape = [1] * len(names)
        shape[axis] = sizes[n]
        off = off + np.arange(sizes[n]).reshape(shape) * strides[n]
    return off.reshape(-1)


@register_layer
class FusedTTConv2d(FusedConv, TTConv2d):
    """:class:`TTConv2d` with a fused per-pixel forward on AVX-512 CPUs (see the module doc).

    Same parameters, spec, :meth:`to_dense` and gradients as :class:`TTConv2d`; build it with
    :meth:`from_tt` (``materialize()`` does) or :meth:`from_dense`.
    """

    onnx_export = (
        "refused: it runs a fused AVX-512 kernel; export the model before materializing it"
    )
    executable_forms = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups_plan, self.chain_macs = plan_groups(self.in_modes, self.out_modes, self.ranks)
        self._steps: tuple[Any, ...] | None = None
        self._steps_key: tuple[Any, ...] = ()
        self._tile_cache: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = {}

    @classmethod
    def from_tt(cls, layer: TTConv2d) -> FusedTTConv2d:
        """The same layer (a copy of its weights) with the fused forward."""
        first = next(layer.parameters())
        new = cls.from_spec(layer.spec()).to(device=first.device, dtype=first.dtype)
        new.load_state_dict(layer.state_dict())
        return new

    def _build_steps(self) -> tuple[Any, ...]:
        """The kernel's step list: merged group matrices, offset tables and buffers (rebuilt
        when a weight changes)."""
        key = self._weights_key()
        if self._steps is not None and key == self._steps_key:
            return self._steps
        c, s, r = self.in_modes, self.out_modes, self.ranks
        d = len(c)
        sizes = {f"c{k}": c[k] for k in range(d)} | {f"s{k}": s[k] for k in range(d)}
        sizes |= {f"r{k}": r[k] for k in range(d + 1)}
        order = [f"c{k}" for k in range(d)] + ["r0"]  # the spatial step writes z[i, a]
        groups, biggest = [], 1
        with torch.no_grad():
            cores = [core.detach().double() for core in self.tt_cores]
            for i, j in self.groups_plan:
                rows = [f"s{k}" for k in range(i)] + [f"c{k}" for k in range(j, d)]
                ks = [f"r{i}"] + [f"c{k}" for k in range(i, j)]
                ns = [f"s{k}" for k in range(i, j)] + [f"r{j}"]
                out_order = [f"s{k}" for k in range(j)] + [f"r{j}"] + [f"c{k}" for k in range(j, d)]
                merged = cores[i]
                for core in cores[i + 1 : j]:
                    a, ss, cc, _ = merged.shape
                    merged = torch.einsum("asct,tuev->asucev", merged, core).reshape(
                        a, ss * core.shape[1], cc * core.shape[2], -1
                    )
                a, S, C, b = merged.shape  # K = (r_i, c_i…), N = (s_i…, r_j), as ks and ns
                weight = merged.permute(0, 2, 1, 3).reshape(a * C, S * b).float()
                tables = [
                    _offsets(order, sizes, rows),
                    _offsets(order, sizes, ks),
                    _offsets(out_order, sizes, rows),
                    _offsets(out_order, sizes, ns),
                ]
                groups.append((weight, *(t.astype(np.int32) for t in tables)))
                biggest = max(biggest, math.prod(sizes[n] for n in out_order))
                order = out_order
            spatial = self.spatial.weight.detach()[:, 0].reshape(self.ranks[0], -1).T.contiguous()
            bias = self.bias.detach() if self.bias is not None else torch.empty(0)
        # Buffers: 0 is z, the steps write 1 and 2 in turn. (Running the steps depth-first over
        # slices of s₁, to keep each pass's buffers in L1, measured no faster.)
        dst = [1 + g % 2 for g in range(len(groups))]
        src = [0, *dst[:-1]]
        weights = [g[0].contiguous() for g in groups]
        tables = [[torch.from_numpy(g[t]) for g in groups] for t in (1, 2, 3, 4)]
        self._steps = (spatial, weights, tables, src, dst, bias, math.prod(c) * r[0], biggest,
                       min(len(groups), 2), dst[-1])  # fmt: skip
        self._steps_key = key
        return self._steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_unavailable(x) is not None:
            return super().forward(x)
        B, _, H, W = x.shape
        P, Q = self._out_size(H, W)
        if B == 0 or P <= 0 or Q <= 0 or x.shape[1] != self.in_channels:
            return super().forward(x)  # its errors (or empty result) are the conv's
        tiles = self._tiles_for(H, W, self.kernel_size, self.padding, self.dilation)
        spatial, weights, tables, src, dst, bias, zsize, size, nbuf, out = self._build_steps()
        return native_kernels().tt_conv2d(
            x.contiguous(), spatial, *tiles, weights, *tables, src, dst, bias,
            self.out_channels, P, Q, zsize, size, nbuf, out,
        )  # fmt: skip


__all__ = ["FusedTTConv2d", "plan_groups"]
