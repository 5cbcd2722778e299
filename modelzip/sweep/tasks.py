"""Tasks: JSON-serialisable evaluations with a ``kind`` and a deterministic ``key``.

A task is a plain dict, ``{"kind": "recipe", "name": ..., ...}``, so that it travels to a worker
process or a Ray node as data and is stored as JSON. Its key is a hash of everything but its
``name``, so the same evaluation always has the same key: a resumed sweep recognises what it has
already done, and the store keeps each key once.

Kinds map to functions by *reference* (``"package.module:function"``), imported in the worker,
because a spawned process or a Ray worker does not share the parent's registrations. Other parts
of modelzip (per-layer sensitivity, auto-compression, NAS) add their own kinds with
:func:`register_task_kind` and submit tasks through :func:`modelzip.sweep.run_tasks`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
import traceback
from collections.abc import Callable
from typing import Any

from modelzip.core.errors import ConfigError, unknown_name

__all__ = ["execute", "register_task_kind", "resolve_kind", "task_key", "task_kinds"]

Task = dict[str, Any]

_KINDS: dict[str, str] = {"recipe": "modelzip.sweep.recipe_task:run_recipe_task"}


def register_task_kind(kind: str, function: str) -> None:
    """Register ``function`` (``"package.module:name"``, taking a task, returning a JSON dict)."""
    if ":" not in function:
        raise ConfigError(f"task kind {kind!r}: function {function!r} must be 'module:name'")
    old = _KINDS.get(kind)
    if old is not None and old != function:
        raise ConfigError(f"task kind {kind!r} is already registered to {old}")
    _KINDS[kind] = function


def task_kinds() -> dict[str, str]:
    """Registered kinds and their function references."""
    return dict(_KINDS)


def resolve_kind(task: Task) -> str:
    """The function reference that runs ``task``."""
    kind = task.get("kind")
    if kind not in _KINDS:
        raise unknown_name("task kind", str(kind), list(_KINDS))
    return _KINDS[kind]


def task_key(task: Task) -> str:
    """A deterministic key: the SHA-256 of the task's canonical JSON, its name left out."""
    body = {k: v for k, v in task.items() if k != "name"}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"task {task.get('name', '?')!r} is not plain JSON data: {e}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _load(reference: str) -> Callable[[Task], dict[str, Any]]:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def setup_worker() -> None:
    """Run once in each worker: one torch thread (workers share the cores).

    The local pool also makes its workers die with the parent
    (:func:`modelzip.sweep.executors.die_with_parent`) before this runs.
    """
    import torch

    torch.set_num_threads(1)


def execute(reference: str, task: Task) -> dict[str, Any]:
    """Run ``task`` with the function at ``reference``; never raises.

    Returns ``{"ok": True, "result": ..., "seconds": ...}`` or ``{"ok": False, "error": ...}``
    with the exception's type, message and the last frames of its traceback.
    """
    import torch

    start = time.perf_counter()
    torch.set_num_threads(1)
    try:
        result = _load(reference)(task)
        json.dumps(result, allow_nan=False)
        return {"ok": True, "result": result, "seconds": time.perf_counter() - start}
    except Exception as e:  # a task's failure is data for the store, not a crash of the sweep
        frames = traceback.format_exception(type(e), e, e.__traceback__)
        return {
            "ok": False,
            "error": f"{type(e).__name__}: {e}",
            "traceback": "".join(frames[-3:]),
            "seconds": time.perf_counter() - start,
        }
