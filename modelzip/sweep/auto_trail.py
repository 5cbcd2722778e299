"""``auto``'s trail in a sweep store: one row per candidate in ``RUN_DIR/sweep.sqlite``.

Each candidate ``auto`` builds is recorded as a done task of kind
:data:`~modelzip.joint.auto_trail.TASK_KIND` the moment it is measured, so a rerun of the same
``modelzip auto`` with the same run directory finds it (``modelzip report`` and other sweep
readers see the same rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelzip.joint.auto_trail import Trail
from modelzip.sweep.store import SweepStore

__all__ = ["StoreTrail"]


class StoreTrail(Trail):
    """A :class:`~modelzip.joint.auto_trail.Trail` backed by the :class:`SweepStore` at ``path``."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.store = SweepStore(path)

    def get(self, key: str) -> dict[str, Any] | None:
        found = super().get(key)
        if found is not None:
            return found
        record = self.store.get(key)
        if record is None or record["status"] != "done":
            return None
        super().put(key, record["task"], record["result"])
        return record["result"]

    def put(self, key: str, task: dict[str, Any], result: dict[str, Any]) -> None:
        super().put(key, task, result)
        seconds = float(result.get("seconds") or 0.0)
        self.store.record_done(key, task, result, seconds, attempts=1)

    def close(self) -> None:
        self.store.close()
