"""The trail of ``auto``: every candidate it built, under a key that makes a rerun resume.

A candidate's *task* is plain JSON (the model's fingerprint, the budget's kind, the validation
size and the recipe); its key is a hash of the task. Before building a candidate ``auto`` asks
its trail for the key; a recorded result (cost, accuracy, deployed latency) is used as it is, so
rerunning the same ``auto`` into the same run directory evaluates only what is missing.

:class:`Trail` keeps records in memory; :class:`modelzip.sweep.auto_trail.StoreTrail` (what
``modelzip auto --run-dir`` uses) keeps them in the run directory's sweep store
(``sweep.sqlite``), one committed row per candidate, so an interrupted search loses nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

#: The sweep task kind of an auto candidate (stored in ``sweep.sqlite`` as its ``kind``).
TASK_KIND = "auto_candidate"


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (24 hex digits) of ``model``'s class and state: a rerun on other weights does not
    find this model's candidates."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        if isinstance(tensor, torch.Tensor):
            t = tensor.detach().cpu().contiguous()
            digest.update(str((t.dtype, tuple(t.shape))).encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def task_key(task: dict[str, Any]) -> str:
    """The key of ``task``: SHA-256 of its canonical JSON, its ``name`` left out (as the sweep's
    :func:`modelzip.sweep.tasks.task_key`)."""
    body = {k: v for k, v in task.items() if k != "name"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Trail:
    """Candidates recorded by key, in memory; ``evaluated`` counts those built in this run."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.evaluated = 0
        self.resumed = 0

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._rows.get(key)
        return None if row is None else row[1]

    def put(self, key: str, task: dict[str, Any], result: dict[str, Any]) -> None:
        self._rows[key] = (task, result)

    def records(self) -> list[dict[str, Any]]:
        """``[{name, key, recipe, family, **result}]`` in the order first recorded."""
        return [
            {"name": task.get("name"), "key": key, "family": task.get("family"),
             "recipe": task.get("recipe"), **result}
            for key, (task, result) in self._rows.items()
        ]  # fmt: skip

    def close(self) -> None:
        """Release what the trail holds open (nothing, in memory)."""

    def __enter__(self) -> Trail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
