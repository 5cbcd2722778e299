"""Compact equivalents of a trained ``nn.Conv2d``, built from its weights and equal to a dense conv.

Each is a :class:`~modelzip.core.module.CompressedModule`, so a compactified model saves and loads
without pickle, and :meth:`to_dense` gives back the dense conv it computes.

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

from modelzip.core.module import CompressedModule, register_layer
from modelzip.core.workload import Workload

__all__ = ["BottleneckConv2d", "DepthwiseSeparableConv2d", "GroupConv2d", "conv_geometry"]


def conv_geometry(conv: nn.Conv2d) -> dict[str, Any]:
    """The spatial arguments of ``conv`` as JSON data."""
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": list(conv.kernel_size),
        "stride": list(conv.stride),
        "padding": list(conv.padding) if not isinstance(conv.padding, str) else conv.padding,
        "dilation": list(conv.dilation),
        "bias": conv.bias is not None,
    }


def _dense_conv(geometry: dict[str, Any], weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    g = geometry
    conv = nn.Conv2d(
        g["in_channels"],
        g["out_channels"],
        tuple(g["kernel_size"]),
        tuple(g["stride"]),
        g["padding"] if isinstance(g["padding"], str) else tuple(g["padding"]),
        tuple(g["dilation"]),
        bias=bias is not None,
    ).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


class _Chain(CompressedModule):
    """A compressed conv that runs its child convs in order; workloads are the children's."""

    onnx_export = "traced"

    stands_for = "Conv2d"

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.chain():
            x = conv(x)
        return x

    def chain(self) -> list[nn.Conv2d]:
        raise NotImplementedError

    def workloads(self, name: str, inputs: tuple[Any, ...], output: Any) -> list[Workload]:
        from modelzip.core.counting import dense_workload

        x, out = inputs[0], []
        with torch.no_grad():
            for i, conv in enumerate(self.chain()):
                y = conv(x)
                out.append(dense_workload(f"{name}.{i}", conv, (x,), y))
                x = y
        return out


@register_layer
class DepthwiseSeparableConv2d(_Chain):
    """``k x k`` depthwise conv (``m`` filters per input channel) then a 1x1 pointwise conv.

    Weights ``C m k^2 + O C m`` (+ ``O`` bias) instead of ``O C k^2`` (Howard et al. 2017,
    MobileNets). :meth:`from_dense` initialises both from the SVD of the trained kernel.
    """

    def __init__(self, geometry: dict[str, Any], multiplier: int) -> None:
        super().__init__()
        self.geometry, self.multiplier = dict(geometry), multiplier
        c, o = geometry["in_channels"], geometry["out_channels"]
        pad = geometry["padding"]
        self.depthwise = nn.Conv2d(
            c,
            c * multiplier,
            tuple(geometry["kernel_size"]),
            tuple(geometry["stride"]),
            pad if isinstance(pad, str) else tuple(pad),
            tuple(geometry["dilation"]),
            groups=c,
            bias=False,
        )
        self.pointwise = nn.Conv2d(c * multiplier, o, 1, bias=geometry["bias"])

    def chain(self) -> list[nn.Conv2d]:
        return [self.depthwise, self.pointwise]

    @classmethod
    def from_dense(cls, dense: nn.Conv2d, config: Any) -> DepthwiseSeparableConv2d:
        o, c, kh, kw = dense.weight.shape
        m = min(int(config.depth_multiplier), o, kh * kw)
        layer = cls(conv_geometry(dense), m).to(dense.weight.device, dense.weight.dtype)
        # Per input channel c: W[:, c] (O x k^2) = U S V^T; keep m terms.
        slices = dense.weight.detach().permute(1, 0, 2, 3).reshape(c, o, kh * kw).double()
        u, s, vh = torch.linalg.svd(slices, full_matrices=False)
        point = (u[:, :, :m] * s[:, None, :m]).permute(1, 0, 2).reshape(o, c * m)
        depth = vh[:, :m, :].reshape(c * m, 1, kh, kw)
        with torch.no_grad():
            layer.depthwise.weight.copy_(depth)
            layer.pointwise.weight.copy_(point.reshape(o, c * m, 1, 1))
            if dense.bias is not None:
                layer.pointwise.bias.copy_(dense.bias)
        return layer

    def to_dense(self) -> nn.Conv2d:
        c, m = self.geometry["in_channels"], self.multiplier
        kh, kw = self.geometry["kernel_size"]
        depth = self.depthwise.weight.detach().reshape(c, m, kh, kw)
        point = self.pointwise.weight.detach().reshape(-1, c, m)
        weight = torch.einsum("ocm,cmhw->ochw", point, depth)
        bias = self.pointwise.bias.detach() if self.pointwise.bias is not None else None
        return _dense_conv(self.geometry, weight, bias)

    def spec(self) -> dict[str, Any]:
        return {"geometry": self.geometry, "multiplier": self.multiplier}


@register_layer
class GroupConv2d(_Chain):
    """A grouped conv (``O C k^2 / g`` weights) holding the diagonal blocks of a dense kernel.

    Krizhevsky et al. (2012) and ShuffleNet; the blocks are the trained weights that connect
    input group ``i`` to output group ``i``, the rest is dropped.
    """

    def __init__(self, geometry: dict[str, Any], groups: int) -> None:
        super().__init__()
        self.geometry, self.groups = dict(geometry), groups
        pad = geometry["padding"]
        self.conv = nn.Conv2d(
            geometry["in_channels"],
            geometry["out_channels"],
            tuple(geometry["kernel_size"]),
            tuple(geometry["stride"]),
            pad if isinstance(pad, str) else tuple(pad),
            tuple(geometry["dilation"]),
            groups=groups,
            bias=geometry["bias"],
        )

    def chain(self) -> list[nn.Conv2d]:
        return [self.conv]

    @classmethod
    def from_dense(cls, dense: nn.Conv2d, config: Any) -> GroupConv2d:
        g = int(config.groups)
        layer = cls(conv_geometry(dense), g).to(dense.weight.device, dense.weight.dtype)
        o, c = dense.out_channels // g, dense.in_channels // g
        blocks = [dense.weight.detach()[i * o : (i + 1) * o, i * c : (i + 1) * c] for i in range(g)]
        with torch.no_grad():
            layer.conv.weight.copy_(torch.cat(blocks, dim=0))
            if dense.bias is not None:
                layer.conv.bias.copy_(dense.bias)
        return layer

    def to_dense(self) -> nn.Conv2d:
        g, w = self.groups, self.conv.weight.detach()
        o, c = w.shape[0] // g, w.shape[1]
        full = w.new_zeros(w.shape[0], c * g, *w.shape[2:])
        for i in range(g):
            full[i * o : (i + 1) * o, i * c : (i + 1) * c] = w[i * o : (i + 1) * o]
        bias = self.conv.bias.detach() if self.conv.bias is not None else None
        return _dense_conv(self.geometry, full, bias)

    def spec(self) -> dict[str, Any]:
        return {"geometry": self.geometry, "groups": self.groups}


@register_layer
class BottleneckConv2d(_Chain):
    """1x1 conv to ``r_in`` -> ``k x k`` conv to ``r_out`` -> 1x1 conv to ``O`` (ResNet-style
    bottleneck), with ``C r_in + r_in r_out k^2 + r_out O`` weights.

    From a dense kernel by truncated HOSVD (Kim et al., ICLR 2016, Tucker-2):
    ``W ~= G x_1 U_out x_2 U_in`` with ``U`` the leading left singular vectors of the output
    and input unfoldings and ``G = W x_1 U_out^T x_2 U_in^T``.
    """

    def __init__(self, geometry: dict[str, Any], ranks: list[int]) -> None:
        super().__init__()
        self.geometry, self.ranks = dict(geometry), [int(r) for r in ranks]
        r_in, r_out = self.ranks
        pad = geometry["padding"]
        self.reduce = nn.Conv2d(geometry["in_channels"], r_in, 1, bias=False)
        self.core = nn.Conv2d(
            r_in,
            r_out,
            tuple(geometry["kernel_size"]),
            tuple(geometry["stride"]),
            pad if isinstance(pad, str) else tuple(pad),
            tuple(geometry["dilation"]),
            bias=False,
        )
        self.expand = nn.Conv2d(r_out, geometry["out_channels"], 1, bias=geometry["bias"])

    def chain(self) -> list[nn.Conv2d]:
        return [self.reduce, self.core, self.expand]

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
        core = torch.einsum("ochw,or,cs->rshw", w, u_out, u_in)
        layer = cls(conv_geometry(dense), [r_in, r_out]).to(dense.weight.device, dense.weight.dtype)
        with torch.no_grad():
            layer.reduce.weight.copy_(u_in.T.reshape(r_in, c, 1, 1))
            layer.core.weight.copy_(core)
            layer.expand.weight.copy_(u_out.reshape(o, r_out, 1, 1))
            if dense.bias is not None:
                layer.expand.bias.copy_(dense.bias)
        return layer

    def to_dense(self) -> nn.Conv2d:
        u_in = self.reduce.weight.detach().flatten(1)  # r_in x C
        u_out = self.expand.weight.detach().flatten(1)  # O x r_out
        weight = torch.einsum("rshw,or,sc->ochw", self.core.weight.detach(), u_out, u_in)
        bias = self.expand.bias.detach() if self.expand.bias is not None else None
        return _dense_conv(self.geometry, weight, bias)

    def spec(self) -> dict[str, Any]:
        return {"geometry": self.geometry, "ranks": self.ranks}
