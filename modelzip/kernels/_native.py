"""Optional native x86 kernels (``native/*.cpp``), compiled on first use and cached on disk.

The XNOR-popcount GEMM and the 4 × 4 BSR product have hand-written SIMD versions that keep
their accumulators in registers, which Numba cannot express (see the sources' headers); the
fused TT-conv (``native/tt_conv.cpp``) has no Numba twin: without it
:class:`~modelzip.kernels.tt_conv.FusedTTConv2d` runs the PyTorch chain. Two builds of the same
interface exist, chosen at run time (:func:`selected_isa`):

* ``avx512`` (``avx512.cpp``, ``tt_conv.cpp``): where the CPU has AVX-512 F, DQ, BW, VL and
  VPOPCNTDQ (:data:`NEEDED_FLAGS`); preferred wherever it can run;
* ``avx2`` (``avx2.cpp``, ``tt_conv_avx2.cpp``): AVX2 + FMA + POPCNT (:data:`AVX2_FLAGS`), for
  the x86 CPUs without AVX-512 (laptops, AMD before Zen 4); popcount by nibble lookup.

Elsewhere (ARM, old x86, no C++ compiler) :func:`native` returns None and the portable kernels
run. ``MODELZIP_NATIVE`` overrides the choice: ``0`` disables the native kernels, ``avx2``
forces the AVX2 build (what an AVX2-only CPU runs, testable on an AVX-512 one), ``avx512`` the
AVX-512 build; ``1`` or unset chooses from the CPU. Each build is made with
``torch.utils.cpp_extension`` into the modelzip cache the first time a kernel asks (about 30 s,
once per source version; later processes load the cached library) — never at import.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
import warnings
from pathlib import Path
from typing import Any

NATIVE = Path(__file__).with_name("native")


@dataclasses.dataclass(frozen=True)
class Build:
    """One extension: its sources (the first holds the bindings), compiler flags and the CPU
    flags (``/proc/cpuinfo``) its code needs."""

    isa: str
    label: str
    sources: tuple[Path, ...]
    headers: tuple[Path, ...]
    cflags: tuple[str, ...]
    needed: tuple[str, ...]


#: Both builds' headers: entry points and bindings, sign packing, the first-layer int8 conv, the
#: dynamic int8 linear, the fused TT-conv's declaration and driver, uint8 max pooling.
SHARED_HEADERS = tuple(
    NATIVE / h
    for h in (
        "entry_points.h",
        "int8_conv.h",
        "int8_gemv.h",
        "sign_pack.h",
        "tt_conv.h",
        "tt_conv_driver.h",
        "uint8_pool.h",
    )
)
AVX512 = Build(
    "avx512", "AVX-512", (NATIVE / "avx512.cpp", NATIVE / "tt_conv.cpp"), SHARED_HEADERS,
    ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx512vpopcntdq"),
    ("avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vpopcntdq"),
)  # fmt: skip
AVX2 = Build(
    "avx2", "AVX2", (NATIVE / "avx2.cpp", NATIVE / "tt_conv_avx2.cpp"), SHARED_HEADERS,
    ("-mavx2", "-mfma", "-mpopcnt"), ("avx2", "fma", "popcnt"),
)  # fmt: skip
#: The builds, best first: automatic dispatch takes the first whose CPU flags are all present.
BUILDS = {b.isa: b for b in (AVX512, AVX2)}
#: CPU flags the AVX-512 build needs.
NEEDED_FLAGS = AVX512.needed
#: CPU flags the AVX2 build needs.
AVX2_FLAGS = AVX2.needed
#: ``MODELZIP_NATIVE`` values that choose from the CPU.
AUTO = frozenset({"", "1", "auto"})


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


def _missing(build: Build) -> list[str]:
    flags = cpu_flags()
    return [f for f in build.needed if f not in flags]


def _selection() -> tuple[Build | None, str | None]:
    """The build this process should run and None, or None and why none can run."""
    mode = os.environ.get("MODELZIP_NATIVE", "1").strip().lower()
    if mode == "0":
        return None, "disabled by MODELZIP_NATIVE=0"
    if mode in BUILDS:
        missing = _missing(BUILDS[mode])
        if missing:
            return None, f"MODELZIP_NATIVE={mode} but the CPU lacks {', '.join(missing)}"
        return BUILDS[mode], None
    if mode not in AUTO:
        return None, f"MODELZIP_NATIVE={mode} is not one of 0, 1, {', '.join(BUILDS)}"
    lacks = []
    for build in BUILDS.values():
        missing = _missing(build)
        if not missing:
            return build, None
        lacks.append(f"{', '.join(missing)} ({build.label})")
    return None, f"the CPU lacks {' and '.join(lacks)}"


def selected_isa() -> str | None:
    """``"avx512"`` or ``"avx2"``: the build :func:`native` loads here (from the CPU and
    ``MODELZIP_NATIVE``), or None where none can run. Whether it compiles is :func:`native`'s."""
    build, _ = _selection()
    return None if build is None else build.isa


def unavailable_reason() -> str | None:
    """Why the native kernels cannot be used here, or None when they can be tried."""
    return _selection()[1]


def source_digest(isa: str = "avx512") -> str:
    """Names the build directory: a changed source builds anew instead of loading a stale one."""
    build = BUILDS[isa]
    return hashlib.sha256(
        b"".join(p.read_bytes() for p in build.sources + build.headers)
    ).hexdigest()[:12]


@functools.cache
def _build(isa: str = "avx512") -> Any:
    from torch.utils import cpp_extension

    from modelzip.core.atomic import cache_dir

    build = BUILDS[isa]
    digest = source_digest(isa)
    folder = cache_dir() / "native" / digest
    folder.mkdir(parents=True, exist_ok=True)
    # cpp_extension serializes builds with a lock file; a build killed midway leaves it behind
    # and every later load would wait on it forever. A build takes ~20 s: 10 minutes is stale.
    lock = folder / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > 600:
        lock.unlink(missing_ok=True)
    return cpp_extension.load(
        name=f"modelzip_{isa}_{digest}",
        sources=[str(p) for p in build.sources],
        extra_include_paths=[str(NATIVE)],
        extra_cflags=["-O3", "-fopenmp", *build.cflags, f"-DMODELZIP_ISA=modelzip_{isa}"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        verbose=False,
    )


@functools.cache
def _load(isa: str) -> Any | None:
    try:
        return _build(isa)
    except Exception as e:  # no compiler, no ninja, a failed build: the Numba kernels run
        label = BUILDS[isa].label
        warnings.warn(f"modelzip: {label} kernels unavailable ({e}); using Numba", stacklevel=3)
        return None


def native() -> Any | None:
    """The compiled extension :func:`selected_isa` names, or None (with one warning if its
    build failed). Follows ``MODELZIP_NATIVE`` as it is at each call; each build loads once."""
    build, _ = _selection()
    return None if build is None else _load(build.isa)


__all__ = [
    "AVX2_FLAGS", "BUILDS", "NEEDED_FLAGS", "cpu_flags", "native", "selected_isa",
    "unavailable_reason",
]  # fmt: skip
