"""The first-layer static int8 convolution on the native kernel (``native/int8_conv.h``).

A static int8 conv with few input values per output (``C·kh·kw`` ≤ :data:`MAX_K`, stride 1: a
network's first layer, on one or three channels) is where PyTorch's int8 engines are slowest for
what they compute: oneDNN took 0.53 ms for LeNet-5's conv1 at batch 64 on a Zen 4 core with VNNI
(35 GOPS, where its conv2 reaches 150) and 1.06 ms under its AVX2 code (the fp32 conv: 0.67).
The deploy step's ``int8:static native`` form (:data:`ENGINE`) runs such a layer on the native
kernel instead, where it measures faster (layer alone, batch 64, one core: 0.57 ms for LeNet-5's
conv1 with VNNI, oneDNN 0.63; 0.37 for 1 → 16 channels 3×3, oneDNN 0.53; under the AVX2 fallback
0.75 for LeNet-5's, oneDNN 1.21): the same codes, the same input and output grids, the same
integer products, requantized in float as the engines do (a code may
differ by one on a rounding tie). The layer keeps its class (a ``StaticInt8Conv2d``); its engine
attribute names the kernel, and :func:`conv_op` is the op its ``_run`` calls. Where the native
kernels are not built (ARM, ``MODELZIP_NATIVE=0``) a file saved with this form still loads and
runs, on PyTorch's default engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from modelzip.kernels.int8_engine_fallback import engine_op, inverse_scale, quantize_on_grid

#: The value of :data:`modelzip.kernels.int8.ENGINE_ATTR` on a conv this module runs.
ENGINE = "native"
#: Most input values per output (``C·kh·kw``) the form is offered for: past it the engines'
#: GEMMs are efficient and the native kernel, a pass over the image per 8 output channels and
#: one 32-bit word of codes per product, is not (3 -> 64 channels, 3×3: 2.0 ms against 1.4).
MAX_K = 64
#: The kernel's product: 0 the fastest exact one for the CPU and the codes, 1 the 7-bit quads
#: (VPMADDUBSW) where the codes allow, 2 the 16-bit pairs: what CPUs without VNNI compute, for
#: the tests.
PATH = 0


@dataclasses.dataclass
class SmallKPacked:
    """A conv's codes, scales and bias for :func:`conv_op`, and the requantization of each
    pair of grids it has met, computed on first use and kept (a deployed layer's are fixed)."""

    codes: torch.Tensor  # (Cout, C, kh, kw) int8, contiguous: the engine's (a folded BN's sign in)
    scale: torch.Tensor  # (Cout,) float: weight scales
    bias: torch.Tensor | None
    padding: tuple[int, int]
    #: Makes the default engine's prepacked weight, for where the native kernels are absent.
    make_fallback: Callable[[], Any] | None = None
    fallback: Any = None
    _colsum: torch.Tensor | None = None
    _grids: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = dataclasses.field(
        default_factory=dict
    )

    def grids(
        self, in_scale: float, in_zero: int, scale: float, zero: int
    ) -> tuple[torch.Tensor, ...]:
        """``(corr, mult, off)``: ``round((acc - corr)·mult + off)`` is the output code."""
        key = (in_scale, in_zero, scale, zero)
        if key not in self._grids:
            if self._colsum is None:
                self._colsum = self.codes.reshape(self.codes.shape[0], -1).long().sum(dim=1)
            mult = in_scale * self.scale.double() / scale
            off = torch.full_like(mult, float(zero))
            if self.bias is not None:
                off += self.bias.double() / scale
            corr = (in_zero * self._colsum).to(torch.int32)
            self._grids[key] = (corr, mult.float(), off.float())
        return self._grids[key]


def qualifies(codes_shape: torch.Size, geometry: Any) -> bool:
    """Whether a conv of this weight shape and geometry (stride, padding, dilation, groups) can
    take the form."""
    k = int(codes_shape[1]) * int(codes_shape[2]) * int(codes_shape[3])
    return (
        geometry.groups == 1
        and not isinstance(geometry.padding, str)
        and tuple(_pair(geometry.stride)) == (1, 1)
        and tuple(_pair(geometry.dilation)) == (1, 1)
        and k <= MAX_K
    )


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def prepack(
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    make_fallback: Callable[[], Any] | None = None,
) -> SmallKPacked:
    """The packed weight :func:`conv_op` takes (``prepack_conv2d``'s arguments), and how to make
    the default engine's (``make_fallback``), used where the native kernels do not run."""
    if groups != 1 or _pair(stride) != (1, 1) or _pair(dilation) != (1, 1):
        raise ValueError(
            "the first-layer int8 kernel takes groups=1, stride 1 and dilation 1, got "
            f"groups={groups}, stride={stride}, dilation={dilation}"
        )
    s = scale.detach().float().cpu().reshape(-1).expand(codes.shape[0]).contiguous()
    b = None if bias is None else bias.detach().float().cpu()
    codes = codes.detach().cpu().to(torch.int8).contiguous()
    return SmallKPacked(codes, s, b, _pair(padding), make_fallback)


_OPS = (torch.ops.quantized.conv2d, torch.ops.quantized.conv2d_relu)


def conv_op(
    x: torch.Tensor,
    packed: SmallKPacked,
    scale: float,
    zero: int,
    relu: bool = False,
    in_grid: tuple[float, int, int] | None = None,
    in_affine: tuple[float, float] | None = None,
) -> torch.Tensor:
    """``quantized::conv2d`` (or ``conv2d_relu``) on the native kernel of a quint8 ``x`` (N, C,
    H, W), or of a float ``x`` quantized on ``in_grid`` ``(scale, zero, top code)`` by the kernel
    as it reads the image (as ``quantize_per_tensor`` and a clamp at the top code would), after
    ``x·a + b`` where ``in_affine`` is ``(a, b)`` (a normalization the int8 chain linked): a
    quint8 tensor on the grid ``(scale, zero)``, channels-last."""
    from modelzip.kernels._native import native

    lib = native()
    if not x.is_quantized:
        if in_grid is None:
            raise ValueError("a float input to the first-layer int8 conv needs its input grid")
        in_scale, in_zero, qmax = in_grid
        if lib is None:
            x = x if in_affine is None else x * in_affine[0] + in_affine[1]
            return engine_op(_OPS, quantize_on_grid(x, in_grid), packed, scale, zero, relu)
        mul = inverse_scale(in_scale)
        add = 0.0
        if in_affine is not None:  # round((x·a + b)·mul): one multiply-add per value
            mul, add = mul * in_affine[0], mul * in_affine[1]
        x = x.float().contiguous()
    else:
        if lib is None:
            return engine_op(_OPS, x, packed, scale, zero, relu)
        if in_affine is not None:
            raise ValueError("a quint8 input to the first-layer int8 conv takes no input affine")
        in_scale, in_zero, qmax, mul, add = float(x.q_scale()), int(x.q_zero_point()), 255, 1.0, 0.0
        x = x.contiguous()
    corr, mult, off = packed.grids(in_scale, in_zero, scale, zero)
    ph, pw = packed.padding
    return lib.int8_conv_small_k(
        x, packed.codes, corr, mult, off, ph, pw, in_zero, zero if relu else 0, PATH,
        mul, add, qmax, scale, zero,
    )  # fmt: skip


def conv_relu_op(
    x: torch.Tensor,
    packed: SmallKPacked,
    scale: float,
    zero: int,
    in_grid: tuple[float, int, int] | None = None,
    in_affine: tuple[float, float] | None = None,
) -> torch.Tensor:
    """:func:`conv_op` with the ReLU in the requantization (codes clamped at the zero point)."""
    return conv_op(x, packed, scale, zero, relu=True, in_grid=in_grid, in_affine=in_affine)


#: The ops quantize a float input themselves (``modelzip.kernels.int8.Int8Format._run``).
conv_op.takes_float = conv_relu_op.takes_float = True  # type: ignore[attr-defined]
