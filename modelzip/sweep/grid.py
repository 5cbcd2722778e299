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

Limits, checked before anything is expanded or run (a sweep file may come from anyone):

* the number of points, the product of the grid's axis lengths plus ``random.n``, is at most
  ``max_points`` (:data:`MAX_SWEEP_POINTS` unless the caller passes another: ``--max-points`` on
  the command line, ``SweepConfig.load(path, max_points=N)``; never the file itself);
* each recipe has at most :data:`modelzip.recipe.MAX_RECIPE_STEPS` steps;
* seeds lie in ``[0, MAX_SEED]`` (what NumPy takes; torch refuses seeds beyond 64 bits);
* a random range has finite bounds, ``low <= high``, and holds an integer if ``integer``;
* whether a ``package.module:factory`` base model may import code outside the installed
  packages is the caller's decision (``--trust-remote-code``, ``run_sweep(trust_remote_code=)``),
  never the file's.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelzip.core.config import load_yaml
from modelzip.core.errors import ConfigError, ModelzipError
from modelzip.core.frozen import ConfigBase, check_range
from modelzip.train import TrainConfig

__all__ = [
    "MAX_SEED",
    "MAX_SWEEP_POINTS",
    "RandomSpace",
    "SweepBase",
    "SweepConfig",
    "SweepPoint",
]

#: Recipes one sweep may generate (grid product plus random draws) unless the caller allows more.
#: Each is a fine-tuning and an evaluation; ten thousand is days of work, and expanding 10^9 (a
#: 1 KB file) took 4 GB within a minute.
MAX_SWEEP_POINTS = 10_000
#: The largest seed: NumPy's limit (torch takes up to 2^64 - 1, Python's random any integer).
MAX_SEED = 2**32 - 1


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

    A ``package.module:factory`` model that imports code outside the installed packages needs the
    caller's trust (``--trust-remote-code``, ``run_sweep(..., trust_remote_code=True)``); a sweep
    file cannot give it.
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepBase:
        if isinstance(data, Mapping) and "trust_remote_code" in data:
            raise ConfigError(
                f"SweepBase.trust_remote_code={data['trust_remote_code']!r} cannot be set in a "
                "sweep file: trusting a model's code is the caller's decision; pass "
                "--trust-remote-code (run_sweep(..., trust_remote_code=True)) instead"
            )
        return super().from_dict(_nested(data, "finetune", TrainConfig))

    def validate(self) -> None:
        _check_seed(self)
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
    ``{low, high, log: false, integer: false}`` (drawn uniformly, or log-uniformly with ``log``)
    with finite bounds, ``low <= high``; an ``integer`` range must hold an integer.
    """

    n: int = 10
    seed: int = 0
    space: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        check_range(self, "n", 1, 100_000)  # and the sweep counts n against its max_points
        _check_seed(self)
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


def _check_seed(config: ConfigBase) -> None:
    seed = config.seed  # type: ignore[attr-defined]
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"{type(config).__name__}.seed={_short(seed)} is out of range; allowed [0, {MAX_SEED}] "
            "(MAX_SEED, 2**32 - 1)"
        )


def _check_range_dist(key: str, dist: Mapping[str, Any]) -> None:
    where = f"random.space.{key}"
    unknown = sorted(set(dist) - {"low", "high", "log", "integer"})
    if unknown:
        raise ConfigError(f"{where} has no option {unknown[0]!r}; known: high, integer, log, low")
    for option in ("log", "integer"):
        if not isinstance(dist.get(option, False), bool):
            raise ConfigError(f"{where}.{option}={dist[option]!r} must be true or false")
    for bound in ("low", "high"):
        value = dist.get(bound)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or _isnan(value):
            raise ConfigError(f"{where}.{bound}={_short(value)} must be a number")
        if not _isfinite(value):
            raise ConfigError(
                f"{where}.{bound}={_short(value)} must be a finite number "
                f"(at most {sys.float_info.max:.4g} in size)"
            )
    low, high = float(dist["low"]), float(dist["high"])
    if low > high:
        raise ConfigError(f"{where}: low={dist['low']!r} is above high={dist['high']!r}")
    if not math.isfinite(high - low):
        raise ConfigError(
            f"{where}: high - low overflows ({dist['high']!r} - {dist['low']!r}); narrow the range"
        )
    if dist.get("log") and low <= 0:
        raise ConfigError(f"{where}.low={dist['low']!r} is out of range; log needs low > 0")
    if dist.get("integer") and math.ceil(low) > math.floor(high):
        raise ConfigError(
            f"{where}: [{dist['low']!r}, {dist['high']!r}] holds no integer; "
            "widen it or drop integer: true"
        )


def _isnan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _isfinite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the largest float
        return False


def _short(value: Any) -> str:
    """``repr(value)``, shortened for the huge integers YAML can hold."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"(an integer of {value.bit_length():,} bits)"
    return repr(value)


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


def _check_key(where: str, key: Any) -> None:
    if not isinstance(key, str):  # YAML reads `null:`, `1:` or `on:` as None, int, bool keys
        raise ConfigError(f"{where}: key {key!r} must be a string 'method.field'")
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
    """A sweep: the base, an optional recipe template, a grid and/or a random sample.

    ``max_points`` bounds :meth:`point_count`; it is the caller's limit, not part of the sweep,
    so :meth:`from_dict` and :meth:`load` take it as an argument, refuse it in the data, and
    :meth:`to_dict` leaves it out.
    """

    base: SweepBase = dataclasses.field(default_factory=SweepBase)
    recipe: tuple[dict[str, Any], ...] = ()
    grid: dict[str, Any] = dataclasses.field(default_factory=dict)
    random: RandomSpace | None = None
    max_points: int = dataclasses.field(default=MAX_SWEEP_POINTS, compare=False)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, max_points: int = MAX_SWEEP_POINTS
    ) -> SweepConfig:
        """Build from plain data; ``max_points`` is the caller's limit on the number of points."""
        if isinstance(data, Mapping):
            if "max_points" in data:
                raise ConfigError(
                    f"SweepConfig.max_points={_short(data['max_points'])} cannot be set in a "
                    "sweep file (a file could lift its own limit); pass --max-points "
                    "(SweepConfig.load(path, max_points=N)) instead"
                )
            data = {**data, "max_points": max_points}
        return super().from_dict(_nested(_nested(data, "base", SweepBase), "random", RandomSpace))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        del out["max_points"]
        return out

    def validate(self) -> None:
        check_range(self, "max_points", 1)
        for key, values in self.grid.items():
            _check_key(f"grid.{key}", key)
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"grid.{key}={values!r} must be a non-empty list of values to try"
                )
        count = self.point_count()  # counted, not expanded: 10^9 points fit in a 1 KB file
        if count > self.max_points:
            raise ConfigError(
                f"the sweep has {_count(count)} points ({self._count_terms()}), above "
                f"max_points={self.max_points:,}; narrow the grid, or raise the limit with "
                f"--max-points (SweepConfig.load(path, max_points=N); default "
                f"MAX_SWEEP_POINTS={MAX_SWEEP_POINTS:,})"
            )
        self.points()  # builds every recipe's configs: bad values fail here, at construction

    def point_count(self) -> int:
        """The number of assignments (before duplicates are dropped), without building any:
        the product of the grid's axis lengths, plus ``random.n``; 1 for the template alone."""
        count = math.prod(len(v) for v in self.grid.values()) if self.grid else 0
        if self.random is not None:
            count += self.random.n
        return count or 1

    def _count_terms(self) -> str:
        terms = []
        if self.grid:
            lengths = [len(v) for v in self.grid.values()]
            shown = " × ".join(map(str, lengths[:12])) + (" × ..." if len(lengths) > 12 else "")
            terms.append(f"grid of {len(lengths)} axes: {shown}")
        if self.random is not None:
            terms.append(f"random.n={self.random.n:,}")
        return " + ".join(terms)

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
    def load(cls, path: str | Path, *, max_points: int = MAX_SWEEP_POINTS) -> SweepConfig:
        """Read a sweep YAML file of at most ``max_points`` points; errors name the file."""
        data = load_yaml(path)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: a sweep file is a mapping with base/recipe/grid/random")
        try:
            return cls.from_dict(data, max_points=max_points)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def _product(grid: dict[str, Any], keys: list[str]) -> itertools.product:
    return itertools.product(*(grid[k] for k in keys))


def _count(n: int) -> str:
    """``n`` with thousands separators, or its order of magnitude when it is astronomical."""
    if n < 10**15:
        return f"{n:,}"
    return f"about 10^{int(n.bit_length() * math.log10(2))}"
