"""Whether the int8 kernels PyTorch and onnxruntime run here have VNNI, decided at run time.

x86 int8 GEMMs multiply uint8 activations by int8 weights. With AVX-512 VNNI (``VPDPBUSD``) the
four products of each group are added straight into int32. Without it (AVX2, and AVX-512 before
Cascade Lake) fbgemm, oneDNN and onnxruntime's MLAS use ``VPMADDUBSW``, which adds *pairs* of
products into a saturating int16: ``2 · 255 · 127 = 64770`` does not fit in ``32767``, so a
layer whose adjacent inputs and weights are both large silently gets a clipped sum. With
activations on 7 bits (codes 0..127) a pair is at most ``2 · 127 · 127 = 32258`` and never
saturates — PyTorch's default ``reduce_range`` for x86 and the advice of onnxruntime's
quantization guide. :func:`reduced_int8_range` says when modelzip's static int8 layers (and
their ONNX export) must use it; ``torch._int_mm``'s signed × signed path saturates likewise and
:func:`modelzip.kernels.int8.int8_matmul` splits its right operand there.

The engines pick their instructions from the CPU and from environment variables, which this
module reads the same way, so that a machine with VNNI can be made to run (and test) what one
without it runs: ``ATEN_CPU_CAPABILITY`` (PyTorch's own kernels), ``ONEDNN_MAX_CPU_ISA`` /
``DNNL_MAX_CPU_ISA`` (oneDNN: the x86 engine's convolutions and ``torch._int_mm``) and
``FBGEMM_ENABLE_INSTRUCTIONS`` (fbgemm: the x86 engine's linear layers, and its convolutions
on CPUs without VNNI). ``MODELZIP_INT8_REDUCE_RANGE=1`` asks for 7-bit activations anyway, e.g.
to export an ONNX file for a machine without VNNI from one with it.
"""

from __future__ import annotations

import functools
import os
import platform

import torch

from modelzip.kernels._native import cpu_flags

#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) below the first one with VNNI (AVX2_VNNI).
ONEDNN_WITHOUT_VNNI = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_MIC",
                                 "AVX512_MIC_4OPS"})  # fmt: skip
#: fbgemm instruction sets (``FBGEMM_ENABLE_INSTRUCTIONS``) without VNNI (``AVX512_E1`` has it).
FBGEMM_WITHOUT_VNNI = frozenset({"AVX2", "AVX512", "AVX512_256"})

_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def _cpu_has_vnni() -> bool:
    # PyTorch asks cpuinfo (any OS); /proc/cpuinfo where that private helper is missing.
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    if probe is not None:
        return bool(probe())
    return "avx512_vnni" in cpu_flags()


@functools.lru_cache(maxsize=1)
def int8_saturation() -> str | None:
    """Why uint8 × int8 products can saturate in this process's int8 kernels, or None where
    they cannot (x86 with AVX-512 VNNI in use, or not x86). Read once: the engines themselves
    read their environment once."""
    if platform.machine().lower() not in _X86:
        return None  # ARM's int8 kernels widen to 16 bits before adding: nothing saturates
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith("AVX512"):
        forced = os.environ.get("ATEN_CPU_CAPABILITY")
        return f"PyTorch runs its {capability} kernels" + (
            f" (ATEN_CPU_CAPABILITY={forced})" if forced else ""
        )
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(name, "").strip().upper()
        if cap in ONEDNN_WITHOUT_VNNI:
            return f"{name}={cap} keeps oneDNN below VNNI"
    cap = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").strip().upper()
    if cap in FBGEMM_WITHOUT_VNNI:
        return f"FBGEMM_ENABLE_INSTRUCTIONS={cap} keeps fbgemm below VNNI"
    if not _cpu_has_vnni():
        return "the CPU lacks AVX-512 VNNI"
    return None


def reduced_int8_range() -> bool:
    """True where statically quantized int8 activations must use 7 bits (codes 0..127): int8
    products can saturate here (:func:`int8_saturation`), or ``MODELZIP_INT8_REDUCE_RANGE=1``."""
    return os.environ.get("MODELZIP_INT8_REDUCE_RANGE") == "1" or int8_saturation() is not None


__all__ = ["FBGEMM_WITHOUT_VNNI", "ONEDNN_WITHOUT_VNNI", "int8_saturation", "reduced_int8_range"]
