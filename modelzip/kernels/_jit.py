"""Shared Numba pieces: a popcount intrinsic and the choice between serial and parallel kernels.

Population count is written by hand because Numba exposes none.

The intrinsic emits LLVM's ``llvm.ctpop.i64``. LLVM lowers it for the CPU Numba compiles for
(``NUMBA_CPU_NAME``, default the host): inside a vectorized loop on a CPU with AVX-512
VPOPCNTDQ it becomes ``vpopcntq`` on 512-bit registers; on a CPU with only ``popcnt`` it becomes
the scalar instruction; on a baseline x86-64 it becomes the SWAR bit trick. So one source is both
the fast and the portable path, and the code is always correct.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
from numba import types
from numba.extending import intrinsic

#: Below this many inner-loop operations a kernel runs serially: waking pool threads costs a
#: scheduler slice on a busy machine (measured: a 0.8 ms GEMM took 7 ms through the pool).
PARALLEL_MIN_WORK = 1 << 22
#: Parallel kernels split their rows into this many chunks (a few per thread, for balance); the
#: serial kernel is the same row function over all rows, so both share one compiled loop.
CHUNKS = 64


@intrinsic
def popcount(typingctx: Any, x: Any) -> Any:
    """Number of set bits of a ``uint64`` (as ``uint64``)."""
    if x != types.uint64:
        return None
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


def pick(parallel: Callable[..., Any], serial: Callable[..., Any], work: int) -> Callable[..., Any]:
    """The serial kernel when one thread is configured or the work is small, else the parallel."""
    if numba.get_num_threads() == 1 or work < PARALLEL_MIN_WORK:
        return serial
    return parallel
