"""Where tasks run: a local process pool (default) or a Ray cluster, behind one small interface.

Both take ``(function reference, task)`` pairs and hand back outcomes as tasks finish, in
whatever order they finish; the parent process alone writes the store. A worker crash (killed by
the OS, out of memory) comes back as a failed outcome, not as an exception of the sweep.

The local pool's workers die with the parent, however it dies (``kill -9``, the OOM killer):
see :func:`die_with_parent`. Once they are gone, multiprocessing's resource tracker, which
exits when the last process holding its pipe does, follows them.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from modelzip.core.errors import ConfigError, ModelzipError
from modelzip.lifeline import die_with_parent
from modelzip.sweep.tasks import execute, setup_worker

__all__ = [
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "default_workers",
    "die_with_parent",
    "make_executor",
]


Outcome = dict[str, Any]


class Executor(Protocol):
    """Runs tasks somewhere; ``tag`` is the caller's handle for each submission."""

    def submit(self, tag: Any, reference: str, task: dict[str, Any]) -> None: ...

    def pending(self) -> int: ...

    def wait_any(self) -> list[tuple[Any, Outcome]]:
        """Block until at least one submission finishes; return every finished one."""
        ...

    def close(self) -> None: ...


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class _Lifeline:
    """The parent's pid, handed to each pool worker as it is spawned (an initializer argument).

    Pickled in the thread that spawns the worker (the one that submits), it also records
    whether that is the main thread: Linux's parent-death signal follows the *thread* that
    created a child, so a worker spawned by a short-lived thread must rely on the watch thread.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pdeathsig = True

    def __getstate__(self) -> dict[str, Any]:
        main = threading.current_thread() is threading.main_thread()
        return {"pid": os.getpid(), "pdeathsig": main}


def _start_worker(lifeline: _Lifeline) -> None:
    die_with_parent(lifeline.pid, pdeathsig=lifeline.pdeathsig)
    setup_worker()


def _collect(
    done: Any, pending: dict[Any, Any], result: Callable[[Any], Outcome]
) -> list[tuple[Any, Outcome]]:
    """``(tag, outcome)`` of each finished handle in ``done``, taken out of ``pending``; a handle
    whose result raises (the worker process itself died: BrokenProcessPool, RayTaskError,
    WorkerCrashedError ...) is a failed outcome."""
    out = []
    for handle in done:
        tag = pending.pop(handle)
        try:
            out.append((tag, result(handle)))
        except Exception as e:
            error = f"worker failed: {type(e).__name__}: {e}"
            out.append((tag, {"ok": False, "error": error, "seconds": None}))
    return out


class LocalExecutor:
    """A ``ProcessPoolExecutor`` with the spawn context (no fork of a process holding torch
    threads), one torch thread per worker, and workers that die with this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = self._new_pool()
        self._futures: dict[cf.Future[Outcome], Any] = {}

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(_Lifeline(),),
        )

    def submit(self, tag: Any, reference: str, task: dict[str, Any]) -> None:
        try:
            future = self._pool.submit(execute, reference, task)
        except cf.process.BrokenProcessPool:
            # A worker died and took the pool with it; later tasks get a fresh pool.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            future = self._pool.submit(execute, reference, task)
        self._futures[future] = tag

    def pending(self) -> int:
        return len(self._futures)

    def wait_any(self) -> list[tuple[Any, Outcome]]:
        done, _ = cf.wait(self._futures, return_when=cf.FIRST_COMPLETED)
        return _collect(done, self._futures, cf.Future.result)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Tasks as Ray remote calls (one CPU each) on a cluster, or on a local Ray started here.

    A Ray session already initialised by the caller is used as it is and left running.
    """

    def __init__(self, workers: int | None, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise ModelzipError(
                "--executor ray needs Ray, which is not installed: pip install 'modelzip[ray]'"
            ) from None
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is not None:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers or default_workers()
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = address or "a local Ray instance"
                raise ModelzipError(f"cannot start or reach Ray at {where}: {e}") from None
        self._remote = ray.remote(num_cpus=1, max_retries=0)(execute)
        self._refs: dict[Any, Any] = {}

    def submit(self, tag: Any, reference: str, task: dict[str, Any]) -> None:
        self._refs[self._remote.remote(reference, task)] = tag

    def pending(self) -> int:
        return len(self._refs)

    def wait_any(self) -> list[tuple[Any, Outcome]]:
        ready, _ = self._ray.wait(list(self._refs), num_returns=1)
        return _collect(ready, self._refs, self._ray.get)

    def close(self) -> None:
        for ref in self._refs:
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owned:
            self._ray.shutdown()


def make_executor(kind: str, workers: int | None = None, address: str | None = None) -> Executor:
    """``"local"`` (a process pool of ``workers``) or ``"ray"`` (at ``address``, or local)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers} is out of range; allowed [1, inf)")
    if kind == "local":
        if address is not None:
            raise ConfigError("--address is for --executor ray; the local pool has no address")
        return LocalExecutor(workers or default_workers())
    if kind == "ray":
        return RayExecutor(workers, address)
    raise ConfigError(f"executor={kind!r} is not allowed; choose one of ['local', 'ray']")
