"""What a sweep explores: a base (model, data, fine-tuning, what to measure) and recipe points.

A sweep file (YAML) looks like::

    base: {model: lenet300, dataset: mnist, eval_size: 1000, accelerator: eyeriss}
    recipe:                       # optional template: fixes the order of the steps
      - {method: magnitude_prune, sparsity: 0.5}
      - {method: quantize_weights, bits: 8}
    grid:                         # the product of these values
      magnitude_prune.sparsity: [0.5, 0.8, 0.9]
      quantize_weights.bits: [2, 4, 8]
    random:                       # and/or n points drawn at random (reproducible by seed)
      n: 10
      seed: 0
      space:
        magnitude_prune.sparsity: {low: 0.3, high: 0.95}
        quantize_weights.bits: [2, 4, 8]

A key ``method.field`` sets ``field`` of the template's first step with that method; a method the
template lacks gets a step of its own, appended in the order the keys first appear. A longer path
(``magnitude_prune.select.exclude``) reaches into nested mappings. Every generated recipe is built
into method configs when the sweep config is constructed, so an out-of-range value fails before
anything runs, naming the point, the field, the value and the allowed range.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelzip.config import load_yaml
from modelzip.errors import ConfigError, ModelzipError
from modelzip.frozen import ConfigBase, check_range
from modelzip.train import TrainConfig

__all__ = ["RandomSpace", "SweepBase", "SweepConfig", "SweepPoint"]


@dataclasses.dataclass(frozen=True)
class SweepBase(ConfigBase):
    """The model every point starts from, and how each point is fine-tuned and measured.

    ``model`` is a zoo name, ``package.module:factory`` or a saved ``.mzip``; a zoo model is its
    cached trained baseline unless ``pretrained`` is false (random weights drawn with ``seed``) or
    ``weights`` names a file. ``eval_size`` test samples (a fixed subset, the same for every
    point; ``None``: the whole test set) give the accuracy; ``train_size`` limits the training
    samples that fine-tuning and data-driven methods see. ``accelerator`` (a preset of
    :mod:`modelzip.hardware` or a spec YAML) adds the estimated energy of one inference.
    ``latency`` adds the measured latency of a batch of 64 test inputs.
    """

    model: str = "lenet300"
    dataset: str | None = None
    weights: str | None = None
    pretrained: bool = True
    seed: int = 0
    eval_size: int | None = 1000
    train_size: int | None = None
    finetune: TrainConfig | None = None
    latency: bool = False
    accelerator: str | None = None
    #: Let a ``package.module:factory`` model import a module outside the installed packages
    #: (that runs its code, in every worker): only for code you trust.
    trust_remote_code: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepBase:
        return super().from_dict(_nested(data, "finetune", TrainConfig))

    def validate(self) -> None:
        check_range(self, "seed", 0)
        check_range(self, "eval_size", 1)
        check_range(self, "train_size", 1)
        if not self.model:
            raise ConfigError("SweepBase.model='' is empty; give a zoo name, factory or file")
        if self.accelerator is not None:
            from modelzip.hardware import get_accelerator

            try:
                get_accelerator(self.accelerator)
            except ModelzipError as e:
                raise ConfigError(f"SweepBase.accelerator={self.accelerator!r}: {e}") from None


@dataclasses.dataclass(frozen=True)
class RandomSpace(ConfigBase):
    """``n`` points drawn from ``space`` with ``seed``.

    Each value of ``space`` is a list (one entry drawn uniformly) or a range
    ``{low, high, log: false, integer: false}`` (drawn uniformly, or log-uniformly with ``log``).
    """

    n: int = 10
    seed: int = 0
    space: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        check_range(self, "n", 1, 100_000)
        check_range(self, "seed", 0)
        if not self.space:
            raise ConfigError("RandomSpace.space={} is empty; give at least one 'method.field'")
        for key, dist in self.space.items():
            _check_key(f"random.space.{key}", key)
            if isinstance(dist, list):
                if not dist:
                    raise ConfigError(f"random.space.{key}=[] is empty; give at least one value")
            elif isinstance(dist, Mapping):
                _check_range_dist(key, dist)
            else:
                raise ConfigError(
                    f"random.space.{key}={dist!r} must be a list of values or "
                    "{low: ..., high: ..., log: false, integer: false}"
                )

    def draw(self) -> list[dict[str, Any]]:
        """The ``n`` assignments ``{key: value}``, the same for the same seed."""
        rng = random.Random(self.seed)
        out = []
        for _ in range(self.n):
            point = {}
            for key in sorted(self.space):
                dist = self.space[key]
                point[key] = rng.choice(dist) if isinstance(dist, list) else _draw(rng, dist)
            out.append({k: point[k] for k in self.space})
        return out


def _check_range_dist(key: str, dist: Mapping[str, Any]) -> None:
    where = f"random.space.{key}"
    unknown = sorted(set(dist) - {"low", "high", "log", "integer"})
    if unknown:
        raise ConfigError(f"{where} has no option {unknown[0]!r}; known: high, integer, log, low")
    for bound in ("low", "high"):
        value = dist.get(bound)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"{where}.{bound}={value!r} must be a number")
    if dist["low"] > dist["high"]:
        raise ConfigError(f"{where}: low={dist['low']!r} is above high={dist['high']!r}")
    if dist.get("log") and dist["low"] <= 0:
        raise ConfigError(f"{where}.low={dist['low']!r} is out of range; log needs low > 0")


def _draw(rng: random.Random, dist: Mapping[str, Any]) -> float | int:
    low, high = float(dist["low"]), float(dist["high"])
    if dist.get("log"):
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    if dist.get("integer"):
        return min(max(round(value), math.ceil(low)), math.floor(high))
    # Rounded so that names, keys and YAML stay readable; 6 digits is finer than any knob needs.
    return round(value, 6)


def _nested(data: Mapping[str, Any], name: str, config_type: type[ConfigBase]) -> Any:
    """``data`` with its mapping ``name`` built into ``config_type`` first.

    Built here rather than by the generic field check, whose message for an optional nested
    config is only "wrong type"; this way the nested config's own message (field, value, range)
    reaches the user, prefixed with where it sits.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get(name), Mapping):
        return data
    try:
        return {**data, name: config_type.from_dict(data[name])}
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


def _check_key(where: str, key: str) -> None:
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(
            f"{where}: key {key!r} must be 'method.field' (e.g. magnitude_prune.sparsity)"
        )


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One recipe to evaluate: a readable name and the recipe as plain steps."""

    name: str
    recipe: list[dict[str, Any]]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _apply(template: list[dict[str, Any]], assignment: dict[str, Any]) -> list[dict[str, Any]]:
    steps = copy.deepcopy(template)
    for key, value in assignment.items():
        method, *path = key.split(".")
        step = next((s for s in steps if s.get("method") == method), None)
        if step is None:
            step = {"method": method}
            steps.append(step)
        node = step
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part!r} of step {method!r} is not a mapping")
        node[path[-1]] = value
    return steps


@dataclasses.dataclass(frozen=True)
class SweepConfig(ConfigBase):
    """A sweep: the base, an optional recipe template, a grid and/or a random sample."""

    base: SweepBase = dataclasses.field(default_factory=SweepBase)
    recipe: tuple[dict[str, Any], ...] = ()
    grid: dict[str, Any] = dataclasses.field(default_factory=dict)
    random: RandomSpace | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepConfig:
        return super().from_dict(_nested(_nested(data, "base", SweepBase), "random", RandomSpace))

    def validate(self) -> None:
        for key, values in self.grid.items():
            _check_key(f"grid.{key}", key)
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"grid.{key}={values!r} must be a non-empty list of values to try"
                )
        self.points()  # builds every recipe's configs: bad values fail here, at construction

    def assignments(self) -> list[dict[str, Any]]:
        """Every ``{key: value}`` to apply to the template: the grid's product, then the draws."""
        out: list[dict[str, Any]] = []
        if self.grid:
            keys = list(self.grid)
            out += [dict(zip(keys, combo, strict=True)) for combo in _product(self.grid, keys)]
        if self.random is not None:
            out += self.random.draw()
        if not out:
            out.append({})  # no grid: the template alone is the one point
        return out

    def points(self) -> list[SweepPoint]:
        """The distinct recipes, each validated, in order; duplicates are dropped."""
        from modelzip.recipe import Recipe

        template = [dict(s) for s in self.recipe]
        seen: set[str] = set()
        out = []
        for assignment in self.assignments():
            name = ",".join(f"{k}={_format(v)}" for k, v in assignment.items()) or "recipe"
            steps = _apply(template, assignment)
            try:
                steps = Recipe.from_list(steps).to_list()
            except ConfigError as e:
                raise ConfigError(f"sweep point {name}: {e}") from None
            canonical = json.dumps(steps, sort_keys=True)
            if canonical not in seen:
                seen.add(canonical)
                out.append(SweepPoint(name, steps))
        return out

    @classmethod
    def load(cls, path: str | Path) -> SweepConfig:
        """Read a sweep YAML file; errors name the file."""
        data = load_yaml(path)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: a sweep file is a mapping with base/recipe/grid/random")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def _product(grid: dict[str, Any], keys: list[str]) -> itertools.product:
    return itertools.product(*(grid[k] for k in keys))
