"""Optional AVX-512 kernels (``native/*.cpp``), compiled on first use and cached on disk.

The XNOR-popcount GEMM and the 4 × 4 BSR product have hand-written AVX-512 versions that keep
their accumulators in registers, which Numba cannot express (see the source's header); on these
machines they run about 1.5× (XNOR) and 1.2–1.4× (BSR) faster than the Numba kernels
(``benchmarks/kernels.py`` times both). The fused TT-conv (``native/tt_conv.cpp``) has no Numba
twin: without it :class:`~modelzip.kernels.tt_conv.FusedTTConv2d` runs the PyTorch chain. They
are built with ``torch.utils.cpp_extension`` into the modelzip cache the first time a kernel asks
(about 30 s, once per source version; later processes load the cached library) — never at
import. Without a C++ compiler, without AVX-512F + VPOPCNTDQ, or with ``MODELZIP_NATIVE=0``,
:func:`native` returns None and the portable kernels run instead.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import warnings
from pathlib import Path
from typing import Any

NATIVE = Path(__file__).with_name("native")
#: Compiled into one extension; the bindings are in avx512.cpp.
SOURCES = (NATIVE / "avx512.cpp", NATIVE / "tt_conv.cpp")
HEADERS = (NATIVE / "tt_conv.h",)
#: CPU flags (``/proc/cpuinfo``) the kernels need.
NEEDED_FLAGS = ("avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vpopcntdq")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where unknown. Read once: layers ask per call."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def unavailable_reason() -> str | None:
    """Why the native kernels cannot be used here, or None when they can be tried."""
    if os.environ.get("MODELZIP_NATIVE", "1") == "0":
        return "disabled by MODELZIP_NATIVE=0"
    missing = [f for f in NEEDED_FLAGS if f not in cpu_flags()]
    if missing:
        return f"the CPU lacks {', '.join(missing)}"
    return None


def source_digest() -> str:
    """Names the build directory: a changed source builds anew instead of loading a stale one."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS)).hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def _build() -> Any:
    from torch.utils import cpp_extension

    from modelzip.core.atomic import cache_dir

    digest = source_digest()
    build = cache_dir() / "native" / digest
    build.mkdir(parents=True, exist_ok=True)
    # cpp_extension serializes builds with a lock file; a build killed midway leaves it behind
    # and every later load would wait on it forever. A build takes ~20 s: 10 minutes is stale.
    lock = build / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > 600:
        lock.unlink(missing_ok=True)
    flags = ["-O3", "-fopenmp", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl",
             "-mavx512vpopcntdq"]  # fmt: skip
    return cpp_extension.load(
        name=f"modelzip_avx512_{digest}",
        sources=[str(p) for p in SOURCES],
        extra_include_paths=[str(NATIVE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build),
        verbose=False,
    )


@functools.lru_cache(maxsize=1)
def native() -> Any | None:
    """The compiled extension, or None (with one warning if the build failed)."""
    if unavailable_reason() is not None:
        return None
    try:
        return _build()
    except Exception as e:  # no compiler, no ninja, a failed build: the Numba kernels run
        warnings.warn(f"modelzip: AVX-512 kernels unavailable ({e}); using Numba", stacklevel=2)
        return None


__all__ = ["NEEDED_FLAGS", "cpu_flags", "native", "unavailable_reason"]
