"""Per-layer allocation of ranks, bit-widths and sparsities: the search space and two searches.

A *setting* is one option index per layer; option 0 keeps the layer, the others apply one method
at one knob value (methods do not stack on a layer: each replaces the dense layer by its own
compressed form). Costs are predicted as the baseline cost minus each layer's own reduction, which
is exact for bytes, nonzero MACs and the accelerator model (sums over layers) and an estimate for
measured latency; every candidate the searches return is then built and measured for real.

- :func:`greedy_path`: sensitivity-guided greedy. From "keep everything", repeatedly take the
  single layer step with the largest predicted cost reduction per predicted accuracy loss (from
  the one-layer-at-a-time sensitivity curves) until no step is left; the path's first state under
  the budget is the greedy's choice, the later ones fallbacks.
- :func:`evolve`: steady-state evolutionary search (tournament selection, uniform crossover,
  per-layer mutation), every candidate evaluated for real; infeasible candidates rank below every
  feasible one, by how far over the budget they are.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from modelzip.core.config import MethodConfig

Setting = tuple[int, ...]

#: A predicted loss this small counts as this much, so free steps rank by their cost reduction.
_MIN_LOSS = 1e-4


@dataclasses.dataclass(frozen=True)
class Option:
    """Keep the layer (``method`` None) or apply ``method`` with its knob at ``value``."""

    method: str | None = None
    value: float = 0.0

    def config(self, layer: str) -> MethodConfig | None:
        from modelzip.joint.sensitivity import layer_config

        return None if self.method is None else layer_config(self.method, self.value, layer)

    def describe(self) -> str:
        if self.method is None:
            return "keep"
        from modelzip.joint.sensitivity import knob_of

        return f"{self.method} {knob_of(self.method).field}={self.value:g}"


@dataclasses.dataclass
class SearchSpace:
    """Options of each layer with their predicted cost reduction and accuracy loss.

    ``reduction[i][j]`` is how much option ``j`` lowers the cost at layer ``i`` (option 0: 0);
    ``loss[i][j]`` the accuracy (a fraction) it loses when applied alone (0 when unknown).
    """

    layers: list[str]
    options: list[list[Option]]
    reduction: list[list[float]]
    loss: list[list[float]]
    base_cost: float

    def predicted_cost(self, setting: Setting) -> float:
        return self.base_cost - sum(self.reduction[i][j] for i, j in enumerate(setting))

    def predicted_loss(self, setting: Setting) -> float:
        return sum(self.loss[i][j] for i, j in enumerate(setting))

    @property
    def keep(self) -> Setting:
        return (0,) * len(self.layers)

    def cheapest(self) -> Setting:
        """Each layer at its option of largest predicted cost reduction."""
        return tuple(max(range(len(r)), key=r.__getitem__) for r in self.reduction)

    def level(self, q: float) -> Setting:
        """Every layer at the same quantile ``q`` (0: keep, 1: cheapest) of its options ranked by
        predicted cost reduction: a uniform compression level."""
        out = []
        for r in self.reduction:
            ranked = sorted(range(len(r)), key=r.__getitem__)
            out.append(ranked[round(q * (len(ranked) - 1))])
        return tuple(out)

    def uniform(self, limit: float) -> list[Setting]:
        """Per method, the least compressed setting applying one knob value to every layer that
        has it whose predicted cost is within ``limit``."""
        mildest: dict[str, tuple[float, Setting]] = {}
        for option in dict.fromkeys(o for opts in self.options for o in opts[1:]):
            setting = tuple(
                next((j for j, o in enumerate(opts) if o == option), 0) for opts in self.options
            )
            cost = self.predicted_cost(setting)
            best = mildest.get(option.method or "")
            if cost <= limit and (best is None or cost > best[0]):
                mildest[option.method or ""] = (cost, setting)
        return [s for _, s in mildest.values()]

    def recipe(self, setting: Setting) -> list[MethodConfig]:
        """One recipe step per compressed layer, selecting it by its exact name."""
        steps = []
        for layer, options, j in zip(self.layers, self.options, setting, strict=True):
            config = options[j].config(layer)
            if config is not None:
                steps.append(config)
        return steps

    def describe(self, setting: Setting) -> list[dict[str, Any]]:
        """Per-layer ``{layer, method, knob, value}`` (method ``keep`` for untouched layers)."""
        from modelzip.joint.sensitivity import knob_of

        out = []
        for layer, options, j in zip(self.layers, self.options, setting, strict=True):
            o = options[j]
            knob = None if o.method is None else knob_of(o.method).field
            out.append(
                {
                    "layer": layer,
                    "method": o.method or "keep",
                    "knob": knob,
                    "value": None if o.method is None else o.value,
                }
            )
        return out


def greedy_path(space: SearchSpace) -> list[Setting]:
    """States visited by the sensitivity-guided greedy, from "keep all" to no step left.

    Each step moves one layer to an option of larger cost reduction, choosing the move with the
    best ``Δcost / max(Δloss, 1e-4)``; a layer never moves back to a cheaper-to-keep option, so
    the predicted cost falls strictly along the path.
    """
    state = list(space.keep)
    path = [tuple(state)]
    while True:
        best: tuple[float, int, int] | None = None
        for i, j0 in enumerate(state):
            for j in range(len(space.options[i])):
                gain = space.reduction[i][j] - space.reduction[i][j0]
                if gain <= 0:
                    continue
                loss = max(space.loss[i][j] - space.loss[i][j0], 0.0)
                score = gain / max(loss, _MIN_LOSS)
                if best is None or score > best[0]:
                    best = (score, i, j)
        if best is None:
            return path
        state[best[1]] = best[2]
        path.append(tuple(state))


@dataclasses.dataclass(frozen=True)
class Evaluated:
    """A candidate evaluated for real: validation accuracy and measured cost."""

    setting: Setting
    accuracy: float
    cost: float


def _fitness(e: Evaluated, limit: float) -> float:
    # Feasible candidates rank by accuracy (>= 0); infeasible ones below all of them.
    return e.accuracy if e.cost <= limit else -e.cost / limit


def evolve(
    space: SearchSpace,
    evaluate: Callable[[Setting], Evaluated],
    limit: float,
    *,
    evaluations: int,
    population: int = 8,
    tournament: int = 3,
    seed: int = 0,
) -> list[Evaluated]:
    """Steady-state evolution of per-layer settings; returns every evaluated candidate.

    The population starts from the cheapest setting (feasible whenever anything is), the mildest
    uniform setting of each method that meets the budget (:meth:`SearchSpace.uniform`, the usual
    hand-made baseline a search should beat), uniform compression levels
    (:meth:`SearchSpace.level`) and random settings; each new child is a
    tournament winner crossed over (uniformly) with another winner, with each layer's option
    mutated with probability ``1/L`` (at least one layer), and replaces the worst member when it
    is fitter. Settings already evaluated are not evaluated again, and a setting whose predicted
    cost is over ``limit`` is first repaired (:func:`_repair`), so that evaluations are not spent
    on candidates known to miss the budget.
    """
    rng = random.Random(seed)
    n_layers = len(space.layers)
    cache: dict[Setting, Evaluated] = {}

    def run(setting: Setting) -> Evaluated:
        if setting not in cache:
            cache[setting] = evaluate(setting)
        return cache[setting]

    def random_setting() -> Setting:
        return tuple(rng.randrange(len(o)) for o in space.options)

    size = min(population, evaluations)
    levels = (space.level(q) for q in (0.75, 0.5, 0.25))
    seeds = list(dict.fromkeys([space.cheapest(), *space.uniform(limit), *levels]))[:size]
    while len(seeds) < size:
        seeds.append(random_setting())
    pop = [run(_repair(space, s, limit, rng)) for s in dict.fromkeys(seeds)]
    attempts = 0
    while len(cache) < evaluations and attempts < 20 * evaluations:
        attempts += 1

        def pick() -> Evaluated:
            group = rng.sample(pop, min(tournament, len(pop)))
            return max(group, key=lambda member: _fitness(member, limit))

        a, b = pick().setting, pick().setting
        child = [a[i] if rng.random() < 0.5 else b[i] for i in range(n_layers)]
        mutated = [i for i in range(n_layers) if rng.random() < 1.0 / n_layers]
        for i in mutated or [rng.randrange(n_layers)]:
            child[i] = _mutate(space, i, child[i], rng)
        setting = _repair(space, tuple(child), limit, rng)
        if setting in cache:
            continue
        e = run(setting)
        worst = min(range(len(pop)), key=lambda k: _fitness(pop[k], limit))
        if _fitness(e, limit) > _fitness(pop[worst], limit):
            pop[worst] = e
    return list(cache.values())


def _mutate(space: SearchSpace, layer: int, current: int, rng: random.Random) -> int:
    """Half the time a neighbouring option in cost-reduction order (a small step), otherwise any
    option (a jump out of a local optimum)."""
    n = len(space.options[layer])
    if rng.random() < 0.5:
        return rng.randrange(n)
    ranked = sorted(range(n), key=space.reduction[layer].__getitem__)
    k = ranked.index(current) + rng.choice((-1, 1))
    return ranked[min(max(k, 0), n - 1)]


def _repair(space: SearchSpace, setting: Setting, limit: float, rng: random.Random) -> Setting:
    """Move random layers one option cheaper at a time until the predicted cost is within
    ``limit`` (or nothing is cheaper): constraint handling by repair, which keeps the search in
    the feasible region instead of evaluating candidates known to miss the budget."""
    state = list(setting)
    while space.predicted_cost(tuple(state)) > limit:
        movable = []
        for i, j in enumerate(state):
            cheaper = [k for k, r in enumerate(space.reduction[i]) if r > space.reduction[i][j]]
            if cheaper:
                movable.append((i, min(cheaper, key=space.reduction[i].__getitem__)))
        if not movable:
            break
        i, k = rng.choice(movable)
        state[i] = k
    return tuple(state)
