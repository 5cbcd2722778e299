"""Steady buffer reuse for timed runs: glibc's malloc thresholds, set once per process.

PyTorch's CPU tensors come from ``malloc``. glibc serves a request above its mmap threshold
(128 KB at start, raised as mapped blocks are freed, up to 32 MB) with a fresh mapping, and gives
the top of its heap back to the system once more than the trim threshold is free. A model whose
activations are a few megabytes then maps, or regrows, its buffers at every call and pays a page
fault per 4 KB page: in a fresh process the small ResNet at batch 64 (channels last, one thread)
ran 21 ms per call, 7 of them in the kernel (3,400 faults per call), and 14 ms once both
thresholds were fixed; its int8 form, with a quarter of the bytes, paid far less. What the
process had done before (one large free raises the dynamic threshold) moved the dense figure by
half, and a speedup measured that way was partly the allocator's. With the thresholds fixed, as
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` would at start-up, freed buffers stay
in the heap for the next call, and every model is timed at its steady state.

Written by hand (a ``mallopt`` call through ``ctypes``): neither PyTorch nor the standard library
sets it. Other C libraries (musl, macOS, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import functools
import os

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap (glibc's upper bound for the threshold, 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap's top kept for reuse up to this size instead of returned.
TRIM_THRESHOLD = 256 << 20
#: Set to ``0`` to keep the C library's own settings.
ENV = "MODELZIP_KEEP_BUFFERS"


@functools.lru_cache(maxsize=1)
def keep_freed_buffers() -> bool:
    """Fix glibc's mmap and trim thresholds in this process (once; later calls return the first
    answer): whether they were set. False off glibc, or with ``MODELZIP_KEEP_BUFFERS=0``."""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) on Windows
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; both are set, or the process keeps its own behaviour.
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )
