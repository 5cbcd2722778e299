"""The static int8 linear on the native kernel (``native/int8_gemv.h``, ``int8_gemm_static``).

The dynamic int8 linear's kernel (:mod:`.int8_gemv`: weights packed in blocks of 64 outputs,
tiles of 6 rows, ``VPDPBUSD``) with the static policy's fixed grids: the input is a quint8 tensor
(a chained layer's output, :mod:`modelzip.quantize.int8_chain`) or a float one the kernel
quantizes on the calibrated input grid, and each output is requantized onto the output grid
(with the ReLU's clamp at its zero point when the chain fused one), as ``quantized::linear`` and
``linear_relu`` do: the same codes, grids and integer products; a code may differ by one on a
rounding tie. Layer alone, 2 threads, Zen 4 with VNNI, batch 64: 4096×4096 in 2.6 ms against
fbgemm's ``quantized::linear`` 3.2.

Offered (form ``int8:static native``) where the native AVX-512 build runs on a CPU with VNNI:
uint8 codes up to 255 would saturate ``VPMADDUBSW``'s int16 pairs, and PyTorch's engines
already keep the input on 7 bits without VNNI. A file that chose it loads everywhere and runs
on PyTorch's default engine where the kernel does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from modelzip.kernels._native import cpu_flags, native, selected_isa
from modelzip.kernels.int8_engine_fallback import engine_op, inverse_scale, quantize_on_grid

#: The value of :data:`modelzip.kernels.int8.ENGINE_ATTR` on a static linear this module runs.
ENGINE = "native"


def available() -> bool:
    """Whether the kernel runs here: the native AVX-512 build, on a CPU with VNNI."""
    return selected_isa() == "avx512" and "avx512_vnni" in cpu_flags() and native() is not None


@dataclasses.dataclass
class StaticGemmPacked:
    """A linear's codes, scales and bias for :func:`linear_op`: packed for the native build on
    first use, and the requantization of each pair of grids it has met (a deployed layer's are
    fixed)."""

    codes: torch.Tensor  # (out, in) int8: the engine's (a folded BN's sign in)
    scale: torch.Tensor  # (out,) float: weight scales
    bias: torch.Tensor | None
    #: Makes the default engine's prepacked weight, for where the kernel does not run.
    make_fallback: Callable[[], Any] | None = None
    fallback: Any = None
    _packed: tuple[Any, torch.Tensor] | None = None
    _grids: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = dataclasses.field(
        default_factory=dict
    )

    def __getstate__(self) -> dict[str, Any]:
        # A copy or pickle carries the codes, not the packing (made for the build loaded then).
        return {**self.__dict__, "_packed": None}

    def packed_for(self, lib: Any) -> torch.Tensor:
        if self._packed is None or self._packed[0] is not lib:
            self._packed = (lib, lib.int8_gemv_pack(self.codes))
        return self._packed[1]

    def grids(
        self, in_scale: float, in_zero: int, scale: float, zero: int
    ) -> tuple[torch.Tensor, ...]:
        """``(corr, mult, off)``: ``round((acc - corr)·mult + off)`` is the output code."""
        key = (in_scale, in_zero, scale, zero)
        if key not in self._grids:
            colsum = self.codes.long().sum(dim=1)
            mult = in_scale * self.scale.double() / scale
            off = torch.full_like(mult, float(zero))
            if self.bias is not None:
                off += self.bias.double() / scale
            corr = (in_zero * colsum).to(torch.int32)
            self._grids[key] = (corr, mult.float(), off.float())
        return self._grids[key]


def prepack(
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    make_fallback: Callable[[], Any] | None = None,
) -> StaticGemmPacked:
    """The weight :func:`linear_op` takes (``prepack_linear``'s arguments), and how to make the
    default engine's (``make_fallback``), used where the kernel does not run."""
    s = scale.detach().float().cpu().reshape(-1).expand(codes.shape[0]).contiguous()
    b = None if bias is None else bias.detach().float().cpu().contiguous()
    return StaticGemmPacked(codes.detach().cpu().to(torch.int8).contiguous(), s, b, make_fallback)


_OPS = (torch.ops.quantized.linear, torch.ops.quantized.linear_relu)


def linear_op(
    x: torch.Tensor,
    packed: StaticGemmPacked,
    scale: float,
    zero: int,
    relu: bool = False,
    in_grid: tuple[float, int, int] | None = None,
) -> torch.Tensor:
    """``quantized::linear`` (or ``linear_relu``) on the native kernel of a quint8 ``x`` (rows ×
    in), or of a float ``x`` quantized on ``in_grid`` ``(scale, zero, top code)`` by the kernel
    (as ``quantize_per_tensor`` and a clamp at the top code would): a quint8 tensor on the grid
    ``(scale, zero)``."""
    lib = native() if available() else None
    if not x.is_quantized:
        if in_grid is None:
            raise ValueError("a float input to the static int8 linear needs its input grid")
        in_scale, in_zero, qmax = in_grid
        if lib is None:
            return engine_op(_OPS, quantize_on_grid(x, in_grid), packed, scale, zero, relu)
        mul = inverse_scale(in_scale)
        x = x.float().contiguous()
    else:
        if lib is None:
            return engine_op(_OPS, x, packed, scale, zero, relu)
        in_scale, in_zero, qmax, mul = float(x.q_scale()), int(x.q_zero_point()), 255, 1.0
    corr, mult, off = packed.grids(in_scale, in_zero, scale, zero)
    return lib.int8_gemm_static(
        x, packed.packed_for(lib), corr, mult, off, packed.codes.shape[0], mul, in_zero, qmax,
        zero if relu else 0, scale, zero,
    )  # fmt: skip


def linear_relu_op(
    x: torch.Tensor,
    packed: StaticGemmPacked,
    scale: float,
    zero: int,
    in_grid: tuple[float, int, int] | None = None,
) -> torch.Tensor:
    """:func:`linear_op` with the ReLU in the requantization (codes clamped at the zero point)."""
    return linear_op(x, packed, scale, zero, relu=True, in_grid=in_grid)


#: The ops quantize a float input themselves (``modelzip.kernels.int8.Int8Format._run``).
linear_op.takes_float = linear_relu_op.takes_float = True  # type: ignore[attr-defined]
