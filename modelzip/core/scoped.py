"""One command-line switch in force for one block: a ``ContextVar`` set and reset around it.

``--trust-remote-code``, ``--allow-nonfinite`` and ``--max-classes`` reach the readers deep in
the call stack this way rather than as arguments threaded through every layer.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def scoped(var: contextvars.ContextVar[T], value: T) -> Iterator[None]:
    """Within the block, ``var`` holds ``value``; afterwards, what it held before."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
