"""Full-network search: regularized evolution (Real et al., AAAI 2019) and random search.

Regularized (aging) evolution keeps a population of ``population`` architectures; each cycle it
samples ``sample_size`` of them, mutates the best of the sample, evaluates the child, adds it and
removes the *oldest* member. Random search (the baseline of Li & Talwalkar, 2019) evaluates
``trials`` uniformly sampled architectures.

Both write a JSON checkpoint after every evaluation (the history, the population and the random
generator's state) and, given the same ``checkpoint`` path, resume from it. Since evaluation is
deterministic per architecture, a resumed search ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from modelzip.compact.nas.space import Arch, arch_key
from modelzip.core.atomic import write_json
from modelzip.core.errors import ConfigError

__all__ = ["SearchResult", "random_search", "regularized_evolution"]

#: ``evaluate(arch) -> metrics`` with at least ``"score"`` (higher is better).
Evaluate = Callable[[Arch], dict[str, Any]]


class Space(Protocol):
    def sample(self, rng: random.Random) -> Arch: ...
    def mutate(self, arch: Arch, rng: random.Random) -> Arch: ...


@dataclasses.dataclass
class SearchResult:
    """Every evaluation in order (``{"arch", "metrics"}``) and the best of them."""

    algorithm: str
    history: list[dict[str, Any]]
    population: list[int] = dataclasses.field(default_factory=list)

    @property
    def best(self) -> dict[str, Any]:
        """The entry with the highest score (the earliest among equals)."""
        return max(self.history, key=lambda e: e["metrics"]["score"])

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "history": self.history, "best": self.best}


class _Run:
    """Search state with its checkpoint: history, population, generator, settings."""

    def __init__(self, algorithm: str, settings: dict[str, Any], seed: int, path: Path | None):
        self.path, self.algorithm, self.settings = path, algorithm, settings
        self.rng = random.Random(seed)
        self.history: list[dict[str, Any]] = []
        self.population: list[int] = []
        self.cache: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            self._load(path)

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        if data.get("algorithm") != self.algorithm or data.get("settings") != self.settings:
            raise ConfigError(
                f"checkpoint {path} is of another search ({data.get('algorithm')}, "
                f"{data.get('settings')}); expected {self.algorithm}, {self.settings}"
            )
        self.history, self.population = data["history"], data["population"]
        version, state, gauss = data["rng"]
        self.rng.setstate((version, tuple(state), gauss))
        self.cache = {arch_key(e["arch"]): e["metrics"] for e in self.history}

    def save(self) -> None:
        if self.path is None:
            return
        version, state, gauss = self.rng.getstate()
        write_json(
            self.path,
            {
                "algorithm": self.algorithm,
                "settings": self.settings,
                "history": self.history,
                "population": self.population,
                "rng": [version, list(state), gauss],
            },
        )

    def evaluate(self, arch: Arch, fn: Evaluate, callback: Callable | None) -> int:
        key = arch_key(arch)
        if key not in self.cache:  # an architecture seen before is not trained again
            self.cache[key] = fn(arch)
        self.history.append({"arch": arch, "metrics": self.cache[key]})
        if callback is not None:
            callback(self.history[-1], len(self.history))
        return len(self.history) - 1

    def score(self, i: int) -> float:
        return self.history[i]["metrics"]["score"]

    def result(self) -> SearchResult:
        return SearchResult(self.algorithm, self.history, self.population)


def regularized_evolution(
    space: Space,
    evaluate: Evaluate,
    *,
    population: int = 10,
    sample_size: int = 3,
    cycles: int = 20,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    callback: Callable[[dict[str, Any], int], Any] | None = None,
) -> SearchResult:
    """Aging evolution (module docstring): ``population + cycles`` evaluations in all.

    Parameters
    ----------
    space
        A search space (``sample(rng)``, ``mutate(arch, rng)``).
    evaluate
        ``arch -> metrics`` with a ``"score"`` to maximise; must be deterministic per
        architecture for resumption to reproduce the run.
    population, sample_size, cycles
        ``P``, ``S`` and the number of mutation cycles of Real et al.
    checkpoint
        JSON file written after every evaluation, and resumed from when it exists.
    callback
        ``callback(entry, n_evaluated)`` after each evaluation (progress, time limits).
    """
    if not 1 <= sample_size <= population:
        raise ConfigError(f"sample_size={sample_size} is out of range; allowed [1, {population}]")
    settings = {"population": population, "sample_size": sample_size, "seed": seed}
    run = _Run("regularized_evolution", settings, seed, _path(checkpoint))
    while len(run.history) < population:
        run.population.append(run.evaluate(space.sample(run.rng), evaluate, callback))
        run.save()
    while len(run.history) < population + cycles:
        contestants = [run.rng.choice(run.population) for _ in range(sample_size)]
        parent = max(contestants, key=run.score)
        child = space.mutate(run.history[parent]["arch"], run.rng)
        run.population.append(run.evaluate(child, evaluate, callback))
        run.population.pop(0)  # the oldest dies, however good it is
        run.save()
    return run.result()


def random_search(
    space: Space,
    evaluate: Evaluate,
    *,
    trials: int = 20,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    callback: Callable[[dict[str, Any], int], Any] | None = None,
) -> SearchResult:
    """Evaluate ``trials`` random architectures of ``space``; checkpoints as above."""
    run = _Run("random_search", {"seed": seed}, seed, _path(checkpoint))
    while len(run.history) < trials:
        run.evaluate(space.sample(run.rng), evaluate, callback)
        run.save()
    return run.result()


def _path(checkpoint: str | Path | None) -> Path | None:
    return Path(checkpoint) if checkpoint is not None else None
