"""Run tasks through an executor into the store: resume, retry once, write points.json.

:func:`run_tasks` is the engine any kind of task goes through (auto-compression and NAS submit
their evaluations here); :func:`run_sweep` turns a :class:`SweepConfig` into recipe tasks, runs
them and writes ``RUN_DIR/points.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from modelzip.core.atomic import write_json
from modelzip.core.errors import ModelzipError
from modelzip.progress import progress_bar
from modelzip.sweep.executors import Executor, default_workers, make_executor
from modelzip.sweep.grid import SweepConfig, SweepPoint
from modelzip.sweep.points import points_document
from modelzip.sweep.recipe_task import make_recipe_task, prepare_base
from modelzip.sweep.store import SweepStore
from modelzip.sweep.tasks import resolve_kind, task_key

__all__ = ["STORE_NAME", "SweepSummary", "run_sweep", "run_tasks", "run_tasks_for_results"]

STORE_NAME = "sweep.sqlite"
BASELINE_NAME = "baseline"


@dataclasses.dataclass
class SweepSummary:
    """What a run did: tasks in the sweep, run now, found done already, and the outcome."""

    tasks: int
    ran: int
    resumed: int
    done: int
    failed: int
    retried: int
    store: str
    points_path: str | None = None
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _finished(record: dict[str, Any] | None, retries: int) -> bool:
    if record is None:
        return False
    return record["status"] == "done" or record["attempts"] > retries


def run_tasks(
    tasks: list[dict[str, Any]],
    store: SweepStore,
    executor: Executor,
    *,
    retries: int = 1,
    progress: bool = True,
) -> SweepSummary:
    """Run every task not yet finished in ``store``; record each outcome as it arrives.

    A task is finished when it is done, or when it failed ``retries + 1`` times. A failed attempt
    is recorded at once with its error and the task is submitted again, up to ``retries`` times;
    a task that fails every attempt stays ``failed`` with every attempt's error.
    """
    keyed: dict[str, dict[str, Any]] = {}
    for task in tasks:
        keyed.setdefault(task_key(task), task)
    references = {key: resolve_kind(task) for key, task in keyed.items()}
    attempts: dict[str, int] = {}
    todo = []
    for key in keyed:
        record = store.get(key)
        if not _finished(record, retries):
            todo.append(key)
            attempts[key] = 0 if record is None else record["attempts"]
    retried = 0
    with progress_bar("sweep", total=len(todo), enabled=progress) as bar:
        for key in todo:
            executor.submit(key, references[key], keyed[key])
        while executor.pending():
            for key, outcome in executor.wait_any():
                attempts[key] += 1
                if outcome["ok"]:
                    store.record_done(
                        key, keyed[key], outcome["result"], outcome["seconds"], attempts[key]
                    )
                    bar.advance()
                    continue
                store.record_failure(key, keyed[key], outcome["error"], attempts[key])
                if attempts[key] <= retries:
                    retried += 1
                    executor.submit(key, references[key], keyed[key])
                else:
                    bar.advance()
    records = [store.get(key) for key in keyed]
    failed = [r for r in records if r is not None and r["status"] == "failed"]
    return SweepSummary(
        tasks=len(keyed),
        ran=len(todo),
        resumed=len(keyed) - len(todo),
        done=sum(1 for r in records if r is not None and r["status"] == "done"),
        failed=len(failed),
        retried=retried,
        store=str(store.path),
        failures=[{"name": r["name"], "key": r["key"], "errors": r["errors"]} for r in failed],
    )


def run_tasks_for_results(
    tasks: list[dict[str, Any]],
    store: SweepStore,
    executor: str,
    workers: int | None,
    address: str | None,
    *,
    what: str,
    progress: bool = True,
) -> tuple[SweepSummary, list[dict[str, Any]]]:
    """:func:`run_tasks` on an executor made for the call (closed after it) and every task's
    result, in the order of ``tasks``: read back from ``store`` where done already, run and
    recorded otherwise. A failure that outlives its retries raises, naming the first one
    (``what``: what the tasks are, for the message).
    """
    pool = make_executor(executor, workers, address)
    try:
        summary = run_tasks(tasks, store, pool, progress=progress)
    finally:
        pool.close()
    if summary.failed:
        first = summary.failures[0]
        raise ModelzipError(
            f"{summary.failed} {what} failed; first ({first['name']}): "
            f"{first['errors'][-1].splitlines()[-1]} (store {store.path})"
        )
    records = [store.get(task_key(task)) for task in tasks]
    return summary, [record["result"] for record in records if record is not None]


def sweep_tasks(config: SweepConfig, *, trust_remote_code: bool = False) -> list[dict[str, Any]]:
    """The baseline (the base model, no recipe) followed by one recipe task per point."""
    points = [SweepPoint(BASELINE_NAME, []), *config.points()]
    return [make_recipe_task(config.base, p, trust_remote_code=trust_remote_code) for p in points]


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    executor: str | Executor = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> SweepSummary:
    """Run ``config`` into ``out/sweep.sqlite`` and write ``out/points.json``.

    Tasks already done in the store (an interrupted earlier run of the same sweep) are not run
    again. ``executor`` is ``"local"`` (a process pool of ``workers``, at most one per task),
    ``"ray"`` (at ``address``, or a local Ray of ``workers`` CPUs), or an :class:`Executor` the
    caller made and will close (its workers then stay warm across sweeps).

    ``trust_remote_code`` lets a ``package.module:factory`` base model import code outside the
    installed packages, in this process and in every worker; it is the caller's to give (the
    command line's ``--trust-remote-code``), never the sweep file's.
    """
    out = Path(out)
    tasks = sweep_tasks(config, trust_remote_code=trust_remote_code)
    owned = isinstance(executor, str)
    if executor == "local":
        workers = min(default_workers() if workers is None else workers, len(tasks))
    # The local pool starts its workers lazily, so a bad base below costs no worker start.
    pool = make_executor(executor, workers, address) if isinstance(executor, str) else executor
    try:
        prepare_base(config.base, trust_remote_code=trust_remote_code)
        with SweepStore(out / STORE_NAME) as store:
            store.set_meta("config", config.to_dict())
            summary = run_tasks(tasks, store, pool, progress=progress)
    finally:
        if owned:
            pool.close()
    with SweepStore(out / STORE_NAME) as store:
        summary.points_path = str(out / "points.json")
        write_json(summary.points_path, _document(config, tasks, store))
    return summary


def _document(config: SweepConfig, tasks: list[dict[str, Any]], store: SweepStore) -> dict:
    baseline: dict[str, Any] = {}
    points = []
    for task in tasks:
        record = store.get(task_key(task))
        if record is None or record["status"] != "done":
            continue
        if task["name"] == BASELINE_NAME and not task["recipe"]:
            baseline = record["result"]
        else:
            points.append({"name": task["name"], "recipe": task["recipe"], **record["result"]})
    base = config.base
    dataset = base.dataset
    if dataset is None:
        from modelzip.models import list_models, model_info

        dataset = model_info(base.model).dataset if base.model in list_models() else ""
    return points_document(base.model, dataset, baseline, points)
