"""Sweeps: grids of recipes on a local process pool or a Ray cluster, stored in SQLite.

>>> from modelzip.sweep import SweepConfig, run_sweep
>>> config = SweepConfig.load("examples/sweep_grid.yaml")
>>> summary = run_sweep(config, "out/sweep", executor="local")   # or executor="ray"

Every evaluation is a *task* (a JSON dict with a ``kind``); :func:`run_tasks` runs any kind
through an executor into a :class:`SweepStore`, so other searches reuse the same machinery.

Names are imported on first use, so that ``modelzip --help`` (which imports
:mod:`modelzip.sweep.command`) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LocalExecutor": "executors",
    "RayExecutor": "executors",
    "make_executor": "executors",
    "RandomSpace": "grid",
    "SweepBase": "grid",
    "SweepConfig": "grid",
    "SweepPoint": "grid",
    "pareto_flags": "points",
    "points_document": "points",
    "STORE_NAME": "runner",
    "SweepSummary": "runner",
    "run_sweep": "runner",
    "run_tasks": "runner",
    "sweep_tasks": "runner",
    "SweepStore": "store",
    "register_task_kind": "tasks",
    "task_key": "tasks",
    "task_kinds": "tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'modelzip.sweep' has no attribute {name!r}")
    return getattr(importlib.import_module(f"modelzip.sweep.{_EXPORTS[name]}"), name)
