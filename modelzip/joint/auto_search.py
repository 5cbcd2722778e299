"""The search of automatic compression over the per-layer space (greedy along the sensitivity
path, with its choice also relaxed, or evolution), the order in which candidates are verified,
and the refusal of a budget no candidate reaches."""

from __future__ import annotations

from modelzip.joint.auto_run import AutoRun, Found
from modelzip.joint.budget import InfeasibleBudgetError
from modelzip.joint.search import Evaluated, SearchSpace, Setting, evolve, greedy_path


def verification_order(found: list[Found], target: float) -> list[Found]:
    """Candidates to verify: the most accurate within the budget first (ties: the less
    compressed, i.e. the costlier, first; along the greedy path that is the earlier state)."""
    feasible = [e for e in found if e.cost <= target]
    return sorted(feasible, key=lambda e: (-e.accuracy, -e.cost))


def relax(space: SearchSpace, setting: Setting, target: float) -> Setting:
    """``setting`` with layers moved back to milder options while its predicted cost stays
    within ``target``.

    A milder option reduces the cost less and is predicted to lose no more accuracy. Each move
    is the one predicted to recover the most accuracy, then to give back the most cost reduction
    (undoing the most compression). The greedy reaches the budget by its best-scoring step,
    which can be far larger than what was missing (a whole layer's low-rank factorization after
    a few bit-width steps elsewhere); the steps before it may no longer be needed, and an
    unneeded compression only adds error that the one-layer sensitivities (a few hundred
    images) are too coarse to predict.
    """
    state = list(setting)
    while True:
        slack = target - space.predicted_cost(tuple(state))
        best: tuple[float, float, int, int] | None = None
        for i, j0 in enumerate(state):
            for j in range(len(space.options[i])):
                given_back = space.reduction[i][j0] - space.reduction[i][j]
                recovered = space.loss[i][j0] - space.loss[i][j]
                if given_back <= 0 or given_back > slack or recovered < 0:
                    continue
                if best is None or (recovered, given_back) > best[:2]:
                    best = (recovered, given_back, i, j)
        if best is None:
            return tuple(state)
        state[best[2]] = best[3]


def _greedy_indices(
    path: list[Setting], space: SearchSpace, target: float, evals: int
) -> list[int]:
    """Path states to evaluate: a window around the first predicted-feasible state (the choice
    and its fallbacks) and evenly spaced states along the rest of the path (the front)."""
    first = next(
        (i for i, s in enumerate(path) if space.predicted_cost(s) <= target), len(path) - 1
    )
    window = evals // 2 + evals % 2
    chosen = set(range(max(0, first - window // 3), min(len(path), first + window - window // 3)))
    rest = [i for i in range(len(path)) if i not in chosen]
    k = max(0, evals - len(chosen))
    if rest and k:
        step = max(1, len(rest) // k)
        chosen.update(rest[::step][:k])
    return sorted(chosen)


def refuse_families(run: AutoRun, family_costs: list[float]) -> None:
    reached = (
        f"the cheapest whole-model candidate costs {run.budget.describe(min(family_costs))}"
        if family_costs
        else "no whole-model candidate applies to this model"
    )
    raise InfeasibleBudgetError(
        f"budget {run.budget.describe()} is out of reach of families "
        f"{list(run.config.families)}: {reached} (baseline "
        f"{run.budget.describe(run.base_cost)})"
    )


def layer_search(
    run: AutoRun, space: SearchSpace, family_costs: list[float], *, bar_enabled: bool
) -> list[Found]:
    """The per-layer search (greedy or evolution); its evaluated settings as candidates."""
    from modelzip.progress import progress_bar

    config, budget = run.config, run.budget
    cheapest = run.evaluate(space, space.cheapest(), "cheapest")
    if cheapest.cost > run.target and not any(c <= run.target for c in family_costs):
        margin = f" (searched under {run.target:.6g} ms, a safety margin)"
        whole = (
            f"; the cheapest whole-model candidate costs {budget.describe(min(family_costs))}"
            if family_costs
            else ""
        )
        raise InfeasibleBudgetError(
            f"budget {budget.describe()} is out of reach: the most aggressive allowed settings "
            f"({_short(space, cheapest.setting)}) cost {budget.describe(cheapest.cost)} "
            f"(baseline {budget.describe(run.base_cost)}) at validation accuracy "
            f"{cheapest.accuracy:.4f}" + whole + (margin if budget.kind == "latency" else "")
        )
    names = {cheapest.setting: "cheapest"}
    with progress_bar("auto", config.budget_evals, enabled=bar_enabled) as bar:
        if config.search == "greedy":
            path = greedy_path(space)
            first = next((s for s in path if space.predicted_cost(s) <= run.target), path[-1])
            relaxed = relax(space, first, run.target)
            # The relaxed choice, when the path does not hold it, takes one of the evaluations.
            extra = config.budget_evals > 1 and relaxed not in path
            evaluated = [cheapest]
            for i in _greedy_indices(path, space, run.target, config.budget_evals - extra):
                if path[i] != cheapest.setting:
                    names[path[i]] = f"greedy-{i}"
                    evaluated.append(run.evaluate(space, path[i], f"greedy-{i}"))
                bar.advance()
            if extra:
                names[relaxed] = "greedy-relaxed"
                evaluated.append(run.evaluate(space, relaxed, "greedy-relaxed"))
                bar.advance()
        else:

            def evaluate(setting: Setting) -> Evaluated:
                bar.advance()
                if setting == cheapest.setting:
                    return cheapest
                names[setting] = f"evolution-{len(run.points)}"
                return run.evaluate(space, setting, names[setting])

            evaluated = evolve(
                space, evaluate, run.target, evaluations=config.budget_evals,
                population=config.population, seed=config.seed,
            )  # fmt: skip
    return [
        Found(
            tuple(space.recipe(e.setting)),
            e.accuracy,
            e.cost,
            names.get(e.setting, "layer"),
            "layer",
            space.describe(e.setting),
        )
        for e in evaluated
        if space.recipe(e.setting)
    ]


def _short(space: SearchSpace, setting: Setting) -> str:
    parts = [f"{d['layer']}: {space.options[i][setting[i]].describe()}"
             for i, d in enumerate(space.describe(setting))]  # fmt: skip
    return ", ".join(parts)
