"""A dynamic int8 linear layer on the native kernel (``native/int8_gemv.h``).

At batch 1 a dynamic int8 linear is one pass over its codes; fbgemm's and onnxruntime's int8
GEMMs, made for many rows, stream them slower. Layer alone, 2 threads, AVX-512 VNNI (Zen 4):
4096×4096 at batch 1 in 0.24 ms against fbgemm's 0.33 and onnxruntime's 0.68; 4096×1024 in
0.029 against 0.055; LeNet-300's 300×784 in 0.005 against 0.08 (fbgemm wakes a second thread
for it). With VNNI the same kernel, in tiles of 6 rows × 64 outputs (24 accumulators, each
weight vector loaded once for 6 rows), also leads at many rows: at batch 64 4096×4096 in 2.6 ms
(416 GMAC/s, 90% of the 2 cores' VPDPBUSD peak measured at 462) against fbgemm's 3.2 and
onnxruntime's 3.3. So the engine (:data:`ENGINE`, the form ``int8:native linear_dynamic``) runs
inputs of up to :func:`row_limit` rows on the native kernel (any number with VNNI) and larger ones
on fbgemm's ``linear_dynamic``; the deploy step keeps it where it measures faster on the user's
sample. The same codes and scales; the input is
quantized in the kernel per call, per tensor, on 8 bits where the CPU has VNNI (its products do
not saturate; fbgemm's dynamic linear keeps 7) and on 7 bits without, as fbgemm's (no
``VPMADDUBSW`` saturation). Where the native kernels are not built (ARM, ``MODELZIP_NATIVE=0``)
a file saved with this form still loads and runs, all on fbgemm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modelzip.core.forms import Candidate
from modelzip.kernels._native import cpu_flags, native, selected_isa
from modelzip.kernels.int8 import (
    DYNAMIC_LINEAR_ENGINES,
    ENGINE_ATTR,
    DynamicLinearEngine,
    linear_dynamic,
    prepack_linear,
)

#: The value of :data:`modelzip.kernels.int8.ENGINE_ATTR` on a layer that runs this kernel.
ENGINE = "native"
#: Most rows an input may have to run on the native kernel, by its product (more run on fbgemm;
#: None: any number). Measured on 2 threads, Zen 4, against fbgemm's dynamic linear: with VNNI
#: (tiles of 6 rows × 64 outputs, 24 accumulators) 1.15-1.27× on 4096×4096 and 4096×1024 at every
#: batch from 1 to 256; with VPMADDUBSW (the AVX-512 build on a CPU without VNNI) 1.06-1.08× at 4
#: rows, 0.84× at 8; the AVX2 build (2 rows per pass over the codes) 1.4× at 4 rows on 4096×1024
#: and 1.3× slower at 8.
MAX_ROWS: dict[str, int | None] = {"vnni": None, "avx512": 4, "avx2": 4}
#: The kernel's product: 0 VPDPBUSD where the CPU has VNNI, 1 VPMADDUBSW (what CPUs without
#: VNNI compute, for the tests).
PATH = 0


def row_limit() -> int | None:
    """:data:`MAX_ROWS` of the native build this process runs and the product it computes."""
    isa = selected_isa() or ""
    if isa == "avx512" and PATH == 0 and "avx512_vnni" in cpu_flags():
        return MAX_ROWS["vnni"]
    return MAX_ROWS.get(isa, 0)


def gemv_candidates(kind: str, build: Callable[[], nn.Module], measuring: bool) -> list[Candidate]:
    """The form ``kind`` of a dynamic int8 linear that ``build`` makes, switched to this engine:
    offered for measuring where the native kernels run, and always for a file that chose it."""

    def on_native() -> nn.Module:
        layer = build()
        layer.__dict__[ENGINE_ATTR] = ENGINE
        return layer

    return [] if measuring and native() is None else [(kind, on_native)]


class NativeGemvLinear(DynamicLinearEngine):
    """``y = x·Wᵀ + b`` (``x`` float ``rows × in``), ``W = scale_k · codes``: up to
    :func:`row_limit` rows on the native kernel (any number with VNNI), more on fbgemm. Packs its
    weights on first use (for the build loaded then); a copy or a pickle carries the codes, not
    the packing."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(codes, scale, bias)
        self._packed: tuple[Any, ...] | None = None
        self._fbgemm: Any = None
        # (build, its row limit): looked up once per build, not per call (1.6 µs a lookup, on a
        # kernel call of 2 µs for LeNet-300's last layer).
        self._limit: tuple[Any, int | None] = (None, 0)

    def _native_state(self, mod: Any) -> tuple[Any, ...]:
        if self._packed is None or self._packed[0] is not mod:
            colsum = self.codes.sum(dim=1, dtype=torch.int32)
            bias = torch.empty(0) if self.bias is None else self.bias
            self._packed = (mod, mod.int8_gemv_pack(self.codes), colsum, bias)
        return self._packed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mod = native()
        if mod is not None and self._limit[0] is not mod:
            self._limit = (mod, row_limit())
        limit = self._limit[1]
        if mod is None or (limit is not None and x.shape[0] > limit):
            if self._fbgemm is None:
                self._fbgemm = prepack_linear(self.codes, self.scale, self.bias)
            return linear_dynamic(x, self._fbgemm)
        _, packed, colsum, bias = self._native_state(mod)
        n = self.codes.shape[0]
        return mod.int8_gemv(x.float(), packed, colsum, self.scale, bias, n, PATH, False)


DYNAMIC_LINEAR_ENGINES[ENGINE] = NativeGemvLinear
