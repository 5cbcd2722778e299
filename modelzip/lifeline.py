"""Worker processes that end with the process that started them, however it ends.

A ``kill -9`` of a command that runs a process pool leaves the pool's workers (hundreds of MB
each) and multiprocessing's resource tracker running forever: the pool's own shutdown never
runs. Every pool modelzip starts runs :func:`die_with_parent` in its workers' initializer.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, *, pdeathsig: bool = True) -> None:
    """End this process when ``parent``, the process that started it, ends, however it ends.

    On Linux (with ``pdeathsig``) the kernel sends SIGKILL the moment the parent exits
    (``prctl(PR_SET_PDEATHSIG)``); everywhere, a daemon thread also checks every half second
    that the parent is still this process's parent (an orphan is handed to another one). A parent
    that died before this ran, while the worker was still starting, ends it at once: that check
    compares against ``parent`` as the parent knew its pid, not against ``os.getppid()`` read now.
    """
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl here: the thread below still watches
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="modelzip-parent-watch").start()
