"""Random-search NAS with its evaluations run as sweep tasks: on a local process pool or a Ray
cluster, stored in the sweep's SQLite store as each finishes, so an interrupted search resumes.

Random search is the parallel one of the two algorithms: its candidates do not depend on each
other's results. Each candidate is a ``"nas"`` task (plain JSON: the space, the architecture,
the data set and the objective's fields); its metrics depend only on the architecture (the proxy
training is seeded by the architecture's key), so they equal an in-process evaluation.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

from modelzip.compact.nas.objective import SearchObjective
from modelzip.compact.nas.search import SearchResult
from modelzip.compact.nas.space import BlockSpace, HierarchicalSpace, arch_key

TASK_KIND = "nas"
TASK_FUNCTION = "modelzip.compact.nas.parallel:run_nas_task"
SPACES = {"block": BlockSpace, "hierarchical": HierarchicalSpace}


def make_space(name: str, input_shape: tuple[int, ...], num_classes: int):
    return SPACES[name](input_shape=tuple(input_shape), num_classes=num_classes)


@functools.lru_cache(maxsize=2)
def _data(name: str):
    from modelzip.data import load_dataset

    return load_dataset(name)  # once per worker process


def run_nas_task(task: dict[str, Any]) -> dict[str, Any]:
    """Train and score one architecture (runs in a worker)."""
    data = _data(task["dataset"])
    space = make_space(task["space"], tuple(data.input_shape), data.num_classes)
    objective = SearchObjective.from_dict(task["objective"])
    return objective(space.build(task["arch"]), data, arch_key(task["arch"]))


def nas_tasks(
    space_name: str, dataset: str, data: Any, objective: SearchObjective, trials: int, seed: int
) -> list[dict[str, Any]]:
    """``trials`` distinct random architectures (fewer if the space runs out), as tasks."""
    space = make_space(space_name, tuple(data.input_shape), data.num_classes)
    rng = random.Random(seed)
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(20 * trials):
        if len(seen) == trials:
            break
        arch = space.sample(rng)
        seen.setdefault(arch_key(arch), arch)
    return [
        {"kind": TASK_KIND, "name": f"arch-{i}", "space": space_name, "dataset": dataset,
         "arch": arch, "objective": objective.to_dict()}
        for i, arch in enumerate(seen.values())
    ]  # fmt: skip


def parallel_random_search(
    space_name: str,
    dataset: str,
    data: Any,
    objective: SearchObjective,
    *,
    trials: int,
    seed: int,
    out: Path,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> SearchResult:
    """Evaluate the trials through :func:`modelzip.sweep.run_tasks`; ``out/sweep.sqlite`` keeps
    them, so a rerun evaluates only what is missing."""
    from modelzip.sweep import SweepStore, register_task_kind
    from modelzip.sweep.runner import run_tasks_for_results

    register_task_kind(TASK_KIND, TASK_FUNCTION)
    tasks = nas_tasks(space_name, dataset, data, objective, trials, seed)
    with SweepStore(out / "sweep.sqlite") as store:
        _, results = run_tasks_for_results(
            tasks, store, executor, workers, address, what="NAS evaluations", progress=progress
        )
    history = [{"arch": t["arch"], "metrics": r} for t, r in zip(tasks, results, strict=True)]
    return SearchResult("random_search (parallel)", history, list(range(len(history))))
