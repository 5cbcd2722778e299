"""The sweep store: one SQLite file, one row per task key, written as each task finishes.

SQLite (stdlib ``sqlite3``) in WAL mode with ``synchronous=FULL``: each result is one committed
transaction, so a sweep killed at any moment keeps every result it had recorded, and a reader
(``modelzip report``, a test) can watch the file while the sweep writes it. The key is the
primary key, so a task is recorded at most once; a rerun updates the row of a failed task in
place instead of adding another.

A row's ``status`` is ``done`` or ``failed``; ``errors`` lists every failed attempt's error, so a
task that failed, was retried and failed again keeps both messages.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from modelzip.core.errors import ModelzipError

__all__ = ["SweepStore", "TaskRecord"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    task TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    result TEXT,
    errors TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL,
    seconds REAL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
"""

#: The columns of a :class:`TaskRecord`, in its key order.
_COLUMNS = ("key", "kind", "name", "task", "status", "result", "errors", "attempts", "seconds")


class TaskRecord(dict):
    """One row as a dict: key, kind, name, task, status, result, errors, attempts, seconds."""


class SweepStore:
    """Open (or create) ``path``; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection, used from the parent process only (workers return results to it).
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ModelzipError(f"cannot open the sweep store {self.path}: {e}") from None

    def __enter__(self) -> SweepStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def set_meta(self, name: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, json.dumps(value)),
        )

    def meta(self, name: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def record_done(
        self, key: str, task: dict[str, Any], result: dict[str, Any], seconds: float, attempts: int
    ) -> None:
        """Record a finished task (replacing the row of an earlier failed attempt)."""
        self._write(key, task, "done", result, self.errors(key), attempts, seconds)

    def record_failure(self, key: str, task: dict[str, Any], error: str, attempts: int) -> None:
        """Record a failed attempt; the error joins those of earlier attempts."""
        self._write(key, task, "failed", None, [*self.errors(key), error], attempts, None)

    def _write(
        self,
        key: str,
        task: dict[str, Any],
        status: str,
        result: dict[str, Any] | None,
        errors: list[str],
        attempts: int,
        seconds: float | None,
    ) -> None:
        row = (
            key,
            str(task.get("kind")),
            str(task.get("name", key)),
            json.dumps(task, sort_keys=True),
            status,
            None if result is None else json.dumps(result),
            json.dumps(errors),
            attempts,
            seconds,
            time.time(),
        )
        # In autocommit mode one statement is one transaction, durable (synchronous=FULL) when
        # execute returns.
        self._db.execute(
            "INSERT INTO tasks (key, kind, name, task, status, result, errors, attempts, "
            "seconds, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET status = excluded.status, "
            "result = excluded.result, errors = excluded.errors, "
            "attempts = excluded.attempts, seconds = excluded.seconds, "
            "finished_at = excluded.finished_at",
            row,
        )

    def errors(self, key: str) -> list[str]:
        row = self._db.execute("SELECT errors FROM tasks WHERE key = ?", (key,)).fetchone()
        return [] if row is None else json.loads(row[0])

    def get(self, key: str) -> TaskRecord | None:
        rows = self._select("WHERE key = ?", (key,))
        return rows[0] if rows else None

    def records(self) -> list[TaskRecord]:
        """Every row, in the order the tasks finished."""
        return self._select("ORDER BY finished_at, key", ())

    def _select(self, where: str, params: tuple[Any, ...]) -> list[TaskRecord]:
        cur = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM tasks {where}", params)
        out = []
        for row in cur:
            record = TaskRecord(zip(_COLUMNS, row, strict=True))
            for field in ("task", "result", "errors"):  # stored as JSON text (result may be NULL)
                if record[field] is not None:
                    record[field] = json.loads(record[field])
            out.append(record)
        return out
