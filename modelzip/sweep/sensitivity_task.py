"""Sensitivity candidates as sweep tasks: a rerun resumes from the run directory's store, and the
candidates can run on a local process pool or a Ray cluster.

Each candidate (one layer, one method, one knob value) becomes a task of kind ``sensitivity``
naming the model as the command line did (zoo name, saved file or ``package.module:factory``,
weights, data set). A worker, a local process or a Ray node, rebuilds the model and the
validation split once and evaluates every candidate it receives. On a cluster the files a task
names must be at the same path on every node, as for ``modelzip sweep``.

A candidate's key holds the digest of the model's state and of the validation split as this
process loaded them (:attr:`ModelSource.digest`), and files are named by their absolute paths:
a rerun from another directory resumes, and one on retrained weights (a zoo baseline trained
again, a file overwritten) evaluates anew instead of reading back the old model's accuracies.

Only accuracies travel: the latency a search needs is measured on this machine by
:mod:`modelzip.joint.auto`, never on a worker whose load the others set.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.joint.sensitivity import evaluate_candidate, validation_split
from modelzip.sweep.runner import run_tasks_for_results
from modelzip.sweep.store import SweepStore
from modelzip.sweep.tasks import register_task_kind, task_key

__all__ = [
    "TASK_KIND",
    "ModelSource",
    "StoreRunner",
    "candidate_task",
    "run_sensitivity_task",
    "state_digest",
]

TASK_KIND = "sensitivity"
register_task_kind(TASK_KIND, "modelzip.sweep.sensitivity_task:run_sensitivity_task")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """How a worker rebuilds the analysed model and its validation images."""

    model: str
    weights: str | None = None
    dataset: str | None = None
    validation_size: int = 2000
    #: SHA-256 of the loaded model's state and validation split (:func:`state_digest`), set by
    #: :class:`StoreRunner`; workers do not read it, it keys the candidates.
    digest: str = ""

    @classmethod
    def resolved(
        cls,
        model: str,
        weights: str | None = None,
        dataset: str | None = None,
        validation_size: int = 2000,
    ) -> ModelSource:
        """The source with each name that is an existing file made absolute (a zoo name, a
        ``module:factory`` reference or a data set name stays as given)."""

        def absolute(name: str | None) -> str | None:
            return str(Path(name).resolve()) if name and Path(name).is_file() else name

        return cls(absolute(model) or model, absolute(weights), absolute(dataset), validation_size)


def state_digest(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 (24 hex digits) of ``model``'s class and state and of the validation split."""
    from modelzip.joint.auto_trail import model_fingerprint

    digest = hashlib.sha256(model_fingerprint(model).encode())
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def candidate_task(source: ModelSource, layer: str, method: str, value: float) -> dict[str, Any]:
    """The task of one candidate; its key depends on the source and the candidate alone."""
    return {
        "kind": TASK_KIND,
        "name": f"{layer} {method}={value:g}",
        "source": dataclasses.asdict(source),
        "layer": layer,
        "method": method,
        "value": float(value),
    }


@functools.lru_cache(maxsize=2)
def _load(source_json: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from modelzip.model_source import dataset_for, load_model

    source = ModelSource(**json.loads(source_json))
    data = dataset_for(source.dataset, source.model)
    model = load_model(source.model, source.weights, source.dataset, progress=False, data=data)
    x, y = validation_split(data, source.validation_size)
    return model.eval(), x, y


def run_sensitivity_task(task: dict[str, Any]) -> dict[str, Any]:
    """A worker's side: ``{"accuracy": float | None}`` of one candidate."""
    model, x, y = _load(json.dumps(task["source"], sort_keys=True))
    value = float(task["value"])
    return {"accuracy": evaluate_candidate(model, x, y, task["layer"], task["method"], value)}


class StoreRunner:
    """Runs the candidates of :func:`modelzip.joint.sensitivity.run_sensitivity` through a
    sweep store: those already done there are read back, the others are evaluated here
    (``executor=None``) or by a sweep executor (``"local"`` pool or ``"ray"``), each recorded
    the moment it finishes.
    """

    def __init__(
        self,
        source: ModelSource,
        store_path: str | Path,
        *,
        executor: str | None = None,
        workers: int | None = None,
        address: str | None = None,
        progress: bool = False,
    ) -> None:
        self.source = source
        self.store_path = Path(store_path)
        self.executor = executor
        self.workers = workers
        self.address = address
        self.progress = progress
        self.resumed = 0

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        candidates: list[tuple[str, str, float]],
    ) -> Iterator[float | None]:
        source = self.source
        if not source.digest:
            source = dataclasses.replace(source, digest=state_digest(model, x, y))
        tasks = [candidate_task(source, *c) for c in candidates]
        with SweepStore(self.store_path) as store:
            if self.executor is None:
                yield from self._here(store, model, x, y, candidates, tasks)
                return
            summary, results = run_tasks_for_results(
                tasks,
                store,
                self.executor,
                self.workers,
                self.address,
                what="sensitivity candidates",
                progress=self.progress,
            )
            self.resumed = summary.resumed
            yield from (result["accuracy"] for result in results)

    def _here(
        self,
        store: SweepStore,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        candidates: list[tuple[str, str, float]],
        tasks: list[dict[str, Any]],
    ) -> Iterator[float | None]:
        for candidate, task in zip(candidates, tasks, strict=True):
            key = task_key(task)
            record = store.get(key)
            if record is not None and record["status"] == "done":
                self.resumed += 1
                yield record["result"]["accuracy"]
                continue
            start = time.perf_counter()
            accuracy = evaluate_candidate(model, x, y, *candidate)
            seconds = time.perf_counter() - start
            store.record_done(key, task, {"accuracy": accuracy}, seconds, attempts=1)
            yield accuracy
