"""Task kinds for the sweep tests, imported by the worker processes (not collected as tests)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def flaky(task: dict[str, Any]) -> dict[str, Any]:
    """Fails on the first attempt (leaving a marker file), succeeds on the retry."""
    marker = Path(task["marker"])
    if not marker.exists():
        marker.write_text("attempted")
        raise RuntimeError(f"first attempt of {task['n']} fails")
    return {"n": task["n"], "square": task["n"] ** 2}


def always_fails(task: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(f"task {task['n']} is broken, attempt after attempt")


def square(task: dict[str, Any]) -> dict[str, Any]:
    return {"n": task["n"], "square": task["n"] ** 2}


def hang(task: dict[str, Any]) -> dict[str, Any]:
    """Leaves a marker file, then never returns (a worker busy when its parent is killed)."""
    Path(task["marker"]).write_text("started")
    time.sleep(600)
    return {}
