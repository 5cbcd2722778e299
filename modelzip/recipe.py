"""A recipe: an ordered list of method configs, saved as a YAML list of steps.

Each step is a mapping with ``method:`` (the registry name), the config's fields and an optional
``select:``::

    - {method: magnitude_prune, sparsity: 0.9, select: {types: [Linear], exclude: ['fc3']}}
    - {method: int8}

A recipe read from plain data (a YAML file, a sweep task) has at most :data:`MAX_RECIPE_STEPS`
steps unless the caller passes a larger ``max_steps`` to :meth:`Recipe.from_list` or
:meth:`Recipe.load`; the length is checked before any step is built. Recipes built in Python
(``Recipe(steps)``, ``Recipe.of``) are not limited: per-layer recipes of a large model may be long.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from modelzip.core.atomic import write_text
from modelzip.core.composition import KINDS, Composition, selections_overlap
from modelzip.core.config import MethodConfig, load_yaml
from modelzip.core.errors import ConfigError, UnknownNameError
from modelzip.core.registry import config_from_dict, registered_spec

__all__ = ["MAX_RECIPE_STEPS", "Recipe"]

#: Steps a recipe read from data may have unless the caller allows more. Each step walks the
#: whole model (23,000 copies of one step in a 400 KB file ran for minutes); a per-layer recipe
#: of a model with a thousand compressible layers still fits.
MAX_RECIPE_STEPS = 1024


def _composition(config: MethodConfig) -> Composition | None:
    spec = registered_spec(config)
    return spec.composition if spec is not None else None


def check_order(steps: tuple[MethodConfig, ...]) -> None:
    """Refuse a step that would meet weights it cannot take (:mod:`modelzip.core.composition`).

    Each step is checked against the last earlier step whose selection may pick the same layers
    (:func:`~modelzip.core.composition.selections_overlap`) and that declares what it leaves;
    methods that declare nothing are never refused here, nor a step that declares it passes by
    what the earlier one leaves (``Composition.passes``).

    Raises
    ------
    ConfigError
        Naming both steps, why the later cannot follow, and the order that works (if any).
    """
    for j, later in enumerate(steps):
        takes = _composition(later)
        if takes is None:
            continue
        for i in range(j - 1, -1, -1):
            earlier = steps[i]
            gives = _composition(earlier)
            if gives is None or not selections_overlap(earlier, later):
                continue
            if gives.gives not in takes.takes | takes.passes:
                a, b = earlier.method, later.method
                fix = (
                    f"put {b} before {a}"
                    if takes.gives in gives.takes
                    else "apply them to different layers (select.names)"
                )
                raise ConfigError(
                    f"recipe step {j} ({b}) cannot follow step {i} ({a}) on the same layers: "
                    f"{a} leaves {KINDS[gives.gives]}, and {takes.reason(b, gives.gives)}; {fix}"
                )
            break


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Ordered method configs, applied one after the other by :func:`modelzip.compress`."""

    steps: tuple[MethodConfig, ...] = ()

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        for i, step in enumerate(steps):
            if not isinstance(step, MethodConfig):
                raise ConfigError(
                    f"recipe step {i} is a {type(step).__name__}, not a method config"
                )
        check_order(steps)
        object.__setattr__(self, "steps", steps)

    @classmethod
    def of(cls, recipe: Recipe | MethodConfig | Iterable[MethodConfig]) -> Recipe:
        """Accept a Recipe, one config, or an iterable of configs."""
        if isinstance(recipe, Recipe):
            return recipe
        if isinstance(recipe, MethodConfig):
            return cls((recipe,))
        return cls(tuple(recipe))

    @classmethod
    def from_list(cls, data: Any, *, max_steps: int = MAX_RECIPE_STEPS) -> Recipe:
        """Build from plain data: a list of at most ``max_steps`` step mappings (``method:`` plus
        fields)."""
        if isinstance(data, dict) and "steps" in data:
            data = data["steps"]
        if not isinstance(data, list):
            raise ConfigError(
                "a recipe is a YAML list of steps, each a mapping with 'method:'; "
                f"got {type(data).__name__}"
            )
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigError(f"max_steps={max_steps!r} is out of range; allowed [1, inf)")
        if len(data) > max_steps:
            raise ConfigError(
                f"the recipe has {len(data):,} steps, above max_steps={max_steps:,}; "
                f"allowed [0, {max_steps:,}] (MAX_RECIPE_STEPS={MAX_RECIPE_STEPS:,} unless "
                "the caller passes max_steps)"
            )
        steps = []
        for i, step in enumerate(data):
            try:
                steps.append(config_from_dict(step))
            except (ConfigError, UnknownNameError) as e:
                raise ConfigError(f"recipe step {i}: {e}") from None
        return cls(tuple(steps))

    def to_list(self) -> list[dict[str, Any]]:
        return [step.to_dict() for step in self.steps]

    @classmethod
    def load(cls, path: str | Path, *, max_steps: int = MAX_RECIPE_STEPS) -> Recipe:
        """Read a recipe YAML file of at most ``max_steps`` steps."""
        data = load_yaml(path)
        try:
            return cls.from_list(data, max_steps=max_steps)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        """Write the recipe as YAML (atomically)."""
        write_text(path, yaml.safe_dump(self.to_list(), sort_keys=False))

    def __iter__(self) -> Iterator[MethodConfig]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)
