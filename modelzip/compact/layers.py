"""Compact equivalents of a trained ``nn.Conv2d``, built from its weights and equal to a dense conv.

Each is a :class:`~modelzip.decompose.conv_chain.ConvChain`, so its spec holds the dense conv's
:class:`~modelzip.core.geometry.ConvGeometry` under ``"conv"`` like every decomposed conv (files
written before kept it, with the bias flag, under ``"geometry"``; they still load), and
:meth:`to_dense` gives back the dense conv it computes.

* :class:`DepthwiseSeparableConv2d`: ``W[o, c] ~= sum_j P[o, c m + j] D[c m + j]``, a rank-``m``
  SVD of each input channel's ``O x k^2`` slice (``m`` the depth multiplier); exact at
  ``m = min(O, k^2)``.
* :class:`GroupConv2d`: the ``g`` diagonal blocks of ``W`` (the off-diagonal ones are dropped).
* :class:`BottleneckConv2d`: 1x1 reduce -> ``k x k`` core -> 1x1 expand, from the truncated HOSVD
  of ``W`` along its output and input modes (Tucker-2); exact at full width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from modelzip.core.counting import dense_workload
from modelzip.core.module import register_layer
from modelzip.core.workload import Workload
from modelzip.decompose.conv_chain import ConvChain, Pieces

__all__ = ["BottleneckConv2d", "DepthwiseSeparableConv2d", "GroupConv2d"]


class _Compact(ConvChain):
    """A compact conv: a :class:`ConvChain` whose workloads are its pieces' named by position,
    from the real tensors (a piece that ``materialize`` made a layer of its own describes itself).
    """

    def workloads(self, name: str, inputs: tuple[Any, ...], output: Any) -> list[Workload]:
        x, out = inputs[0], []
        with torch.no_grad():
            for i, piece in enumerate(getattr(self, p) for p in self.parts):
                y = piece(x)
                out.append(dense_workload(f"{name}.{i}", piece, (x,), y))
                x = y
        return out


@register_layer
class DepthwiseSeparableConv2d(_Compact):
    """``k x k`` depthwise conv (``m`` filters per input channel) then a 1x1 pointwise conv.

    Weights ``C m k^2 + O C m`` (+ ``O`` bias) instead of ``O C k^2`` (Howard et al. 2017,
    MobileNets). :meth:`from_dense` initialises both from the SVD of the trained kernel.
    """

    parts = ("depthwise", "pointwise")

    def _init_chain(self, new: Pieces, multiplier: int) -> None:
        self.multiplier = m = int(multiplier)
        c = self.in_channels
        self.depthwise = new.conv(self.geometry.with_channels(c, c * m, groups=c))
        self.pointwise = new.pointwise(c * m, self.out_channels, self.bias_enabled)

    def chain_spec(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier}

    @classmethod
    def from_dense(cls, dense: nn.Conv2d, config: Any) -> DepthwiseSeparableConv2d:
        o, c, kh, kw = dense.weight.shape
        m = min(int(config.depth_multiplier), o, kh * kw)
        layer = cls.like(dense, m)
        # Per input channel c: W[:, c] (O x k^2) = U S V^T; keep m terms.
        slices = dense.weight.detach().permute(1, 0, 2, 3).reshape(c, o, kh * kw).double()
        u, s, vh = torch.linalg.svd(slices, full_matrices=False)
        point = (u[:, :, :m] * s[:, None, :m]).permute(1, 0, 2).reshape(o, c * m, 1, 1)
        with torch.no_grad():
            layer.depthwise.weight.copy_(vh[:, :m, :].reshape(c * m, 1, kh, kw))
            layer.pointwise.weight.copy_(point)
        return layer

    def kernel(self) -> Tensor:
        c, m = self.in_channels, self.multiplier
        depth = self.depthwise.weight.reshape(c, m, *self.kernel_size)
        point = self.pointwise.weight.reshape(-1, c, m)
        return torch.einsum("ocm,cmhw->ochw", point, depth)


@register_layer
class GroupConv2d(_Compact):
    """A grouped conv (``O C k^2 / g`` weights) holding the diagonal blocks of a dense kernel.

    Krizhevsky et al. (2012) and ShuffleNet; the blocks are the trained weights that connect
    input group ``i`` to output group ``i``, the rest is dropped.
    """

    parts = ("conv",)

    def _init_chain(self, new: Pieces, groups: int) -> None:
        self.groups = g = int(groups)
        grouped = self.geometry.with_channels(self.in_channels, self.out_channels, groups=g)
        self.conv = new.conv(grouped, self.bias_enabled)

    def chain_spec(self) -> dict[str, Any]:
        return {"groups": self.groups}

    @classmethod
    def from_dense(cls, dense: nn.Conv2d, config: Any) -> GroupConv2d:
        g = int(config.groups)
        layer = cls.like(dense, g)
        o, c = dense.out_channels // g, dense.in_channels // g
        blocks = [dense.weight.detach()[i * o : (i + 1) * o, i * c : (i + 1) * c] for i in range(g)]
        with torch.no_grad():
            layer.conv.weight.copy_(torch.cat(blocks, dim=0))
        return layer

    def kernel(self) -> Tensor:
        g, w = self.groups, self.conv.weight
        o, c = w.shape[0] // g, w.shape[1]
        full = w.new_zeros(w.shape[0], c * g, *w.shape[2:])
        for i in range(g):
            full[i * o : (i + 1) * o, i * c : (i + 1) * c] = w[i * o : (i + 1) * o]
        return full


@register_layer
class BottleneckConv2d(_Compact):
    """1x1 conv to ``r_in`` -> ``k x k`` conv to ``r_out`` -> 1x1 conv to ``O`` (ResNet-style
    bottleneck), with ``C r_in + r_in r_out k^2 + r_out O`` weights.

    From a dense kernel by truncated HOSVD (Kim et al., ICLR 2016, Tucker-2):
    ``W ~= G x_1 U_out x_2 U_in`` with ``U`` the leading left singular vectors of the output
    and input unfoldings and ``G = W x_1 U_out^T x_2 U_in^T``.
    """

    parts = ("reduce", "core", "expand")

    def _init_chain(self, new: Pieces, ranks: list[int]) -> None:
        self.ranks = [int(r) for r in ranks]
        r_in, r_out = self.ranks
        self.reduce = new.pointwise(self.in_channels, r_in)
        self.core = new.conv(self.geometry.with_channels(r_in, r_out))
        self.expand = new.pointwise(r_out, self.out_channels, self.bias_enabled)

    def chain_spec(self) -> dict[str, Any]:
        return {"ranks": list(self.ranks)}

    @classmethod
    def from_dense(cls, dense: nn.Conv2d, config: Any) -> BottleneckConv2d:
        w = dense.weight.detach().double()
        o, c = w.shape[:2]
        frac = float(config.width_fraction)
        r_out, r_in = max(1, round(frac * o)), max(1, round(frac * c))
        u_out = torch.linalg.svd(w.reshape(o, -1), full_matrices=False)[0][:, :r_out]
        u_in = torch.linalg.svd(w.transpose(0, 1).reshape(c, -1), full_matrices=False)[0]
        u_in = u_in[:, :r_in]
        r_out, r_in = u_out.shape[1], u_in.shape[1]
        layer = cls.like(dense, [r_in, r_out])
        with torch.no_grad():
            layer.reduce.weight.copy_(u_in.T.reshape(r_in, c, 1, 1))
            layer.core.weight.copy_(torch.einsum("ochw,or,cs->rshw", w, u_out, u_in))
            layer.expand.weight.copy_(u_out.reshape(o, r_out, 1, 1))
        return layer

    def kernel(self) -> Tensor:
        u_in = self.reduce.weight.flatten(1)  # r_in x C
        u_out = self.expand.weight.flatten(1)  # O x r_out
        return torch.einsum("rshw,or,sc->ochw", self.core.weight, u_out, u_in)
