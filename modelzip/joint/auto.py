"""Automatic compression to a budget: per-layer ranks, bit-widths and sparsities, chosen for you.

``auto_compress(model, data, parse_budget("size=50kB"), AutoConfig(max_drop=0.5))``

1. Cost each layer's options (:mod:`modelzip.joint.search`): the model with only that layer
   compressed, costed by the budget's :class:`~modelzip.joint.budget.CostModel`; measured latency
   is timed per layer on the layer's own input, interleaved with the dense layer
   (:mod:`modelzip.core.timing`), so that the table is not whole-model timer noise.
   Whole-model candidates of the other families and compositions (channel pruning, static
   int8, prune + quantize, channel prune + int8, decompose + quantize:
   :mod:`modelzip.joint.auto_families`) are costed too, and the mildest ones within the budget
   of each family evaluated; the search chooses among all of them. A latency is measured on the
   candidate's deployed form (:func:`modelzip.deploy.materialize`), timed interleaved against
   the dense model deployed the same way (:func:`modelzip.deploy.dense_anchor`).
2. Refuse an infeasible budget early: the cheapest allowed setting is built and measured, and if
   it and every family's candidates miss the budget, :class:`InfeasibleBudgetError` says what
   they reached.
3. Search: ``greedy`` (sensitivity-guided, from :func:`~modelzip.joint.sensitivity.run_sensitivity`
   on a validation split) or ``evolution``; the candidates explored are evaluated for real on
   the validation split and form the Pareto front (accuracy against cost). The greedy's last
   step into the budget can be a large one that makes its earlier steps unnecessary; its choice
   is also evaluated *relaxed* (:func:`~modelzip.joint.auto_search.relax`: layers moved back
   to milder options while the predicted cost stays within the budget), so the model is not
   compressed beyond the budget.
   Every candidate built is recorded in a :class:`~modelzip.joint.auto_trail.Trail` (in the run
   directory's sweep store from the command line), and one already recorded is not built again.
4. Verify: the chosen setting is built, fine-tuned briefly on the training part (never the
   validation or test images), and its cost measured again — latency is searched with a safety
   margin under the budget and re-measured; a model that misses the budget or the tolerated
   accuracy drop is never returned: the next candidate is tried, then the error is raised.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from modelzip.core.config import MethodConfig
from modelzip.joint.auto_config import AutoConfig
from modelzip.joint.auto_run import AutoRun
from modelzip.joint.auto_search import layer_search, refuse_families, verification_order
from modelzip.joint.auto_space import layer_space
from modelzip.joint.auto_trail import Trail
from modelzip.joint.budget import Budget, InfeasibleBudgetError
from modelzip.joint.pareto import Point, mark_pareto, points_document
from modelzip.joint.sensitivity import SensitivityResult, run_sensitivity

__all__ = ["AutoConfig", "AutoResult", "auto_compress"]


@dataclasses.dataclass
class AutoResult:
    """What automatic compression chose, the model, and what it explored on the way."""

    model: nn.Module
    recipe: list[MethodConfig]
    settings: list[dict[str, Any]]
    budget: Budget
    cost: float
    baseline_cost: float
    accuracy: float
    baseline_accuracy: float
    points: list[Point]
    chosen: Point
    baseline: dict[str, Any]
    model_name: str
    dataset: str
    finetuned: bool
    sensitivity: SensitivityResult | None = None
    #: The :class:`~modelzip.report.Report` of building the chosen model (validation accuracy).
    report: Any = None
    #: The chosen candidate's family (``layer`` for a per-layer setting).
    family: str = "layer"
    #: Every candidate built or found recorded: name, family, recipe, cost, accuracy, latency.
    trail: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Compositions ``compress`` does not stack yet, with the reason.
    unavailable: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Candidates built in this run, and found already recorded in the trail.
    evaluated: int = 0
    resumed: int = 0

    def points_document(self) -> dict[str, Any]:
        return points_document(self.model_name, self.dataset, self.baseline, self.points)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary: budget, cost, accuracies (validation), settings and recipe."""
        from modelzip.recipe import Recipe

        return {
            "model": self.model_name,
            "dataset": self.dataset,
            "budget": {**self.budget.to_dict(), "unit": self.budget.unit},
            "cost": self.cost,
            "baseline_cost": self.baseline_cost,
            "accuracy": self.accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "drop_points": 100 * (self.baseline_accuracy - self.accuracy),
            "finetuned": self.finetuned,
            "settings": self.settings,
            "recipe": Recipe.of(self.recipe).to_list(),
            "family": self.family,
            "explored": len(self.points),
            "evaluated": self.evaluated,
            "resumed": self.resumed,
            "unavailable": self.unavailable,
        }


def auto_compress(
    model: nn.Module,
    data: Any,
    budget: Budget,
    config: AutoConfig | None = None,
    *,
    model_name: str = "model",
    sensitivity: SensitivityResult | None = None,
    progress: bool = False,
    trail: Trail | None = None,
) -> AutoResult:
    """Compress ``model`` to ``budget`` within ``config.max_drop`` points of validation accuracy.

    Returns an :class:`AutoResult` with the chosen recipe (a per-layer setting, one step per
    compressed layer selected by name, or a whole-model recipe of one family or composition;
    either replayable by :func:`modelzip.compress`), the model, and every explored point with
    its Pareto flag. Raises :class:`InfeasibleBudgetError` (naming the best reachable cost and
    accuracy) when no allowed setting meets the budget within the tolerated drop. ``model`` is
    never changed. The greedy search runs the sensitivity analysis of ``config.sensitivity``
    unless given its ``sensitivity`` result (of the same model, data and config). ``trail``
    records every candidate built; one it already holds is not built again (a resumed run).
    """
    from modelzip.recipe import Recipe

    config = config or AutoConfig()
    run = AutoRun(model, data, budget, config, progress, trail)
    found, family_costs = run.families()
    space = None
    if "layer" in config.families:
        if config.search == "greedy" and sensitivity is None:
            sensitivity = run_sensitivity(
                run.model, data, config.sensitivity, model_name=model_name, progress=progress
            )
        space = layer_space(run, sensitivity)
        found.extend(layer_search(run, space, family_costs, bar_enabled=progress))
    elif not found:
        refuse_families(run, family_costs)
    mark_pareto(run.points)

    tried = []
    for e in verification_order(found, run.target)[: config.verify_attempts]:
        small, acc, cost, report = run.verify(e.recipe)
        drop = 100 * (run.base_accuracy - acc)
        tried.append((e, acc, cost))
        if cost <= budget.limit and drop <= config.max_drop + 1e-9:
            steps = Recipe.of(list(e.recipe)).to_list()
            chosen = next(p for p in run.points if p.recipe == steps)
            final = dataclasses.replace(chosen, name="chosen", accuracy=acc, cost=cost)
            if budget.kind == "latency":
                final.latency_ms = cost
            return AutoResult(
                model=small,
                recipe=list(e.recipe),
                settings=e.settings,
                budget=budget,
                cost=cost,
                baseline_cost=run.base_cost,
                accuracy=acc,
                baseline_accuracy=run.base_accuracy,
                points=run.points,
                chosen=final,
                baseline=run.baseline(),
                model_name=model_name,
                dataset=getattr(data, "name", "data"),
                finetuned=bool(report.finetune_epochs),
                sensitivity=sensitivity,
                report=report,
                family=e.family,
                trail=run.trail.records(),
                unavailable=run.unavailable,
                evaluated=run.trail.evaluated,
                resumed=run.trail.resumed,
            )
    within = [e for e in found if e.cost <= run.target]
    if not within:
        refuse_families(run, family_costs)
    best = max(within, key=lambda e: e.accuracy)
    verified = (
        "; verified (fine-tuned): "
        + ", ".join(f"accuracy {a:.4f} at {budget.describe(c)}" for _, a, c in tried)
        if tried
        else ""
    )
    raise InfeasibleBudgetError(
        f"no candidate meets budget {budget.describe()} within max-drop {config.max_drop:g} points "
        f"(baseline validation accuracy {run.base_accuracy:.4f}): the most accurate explored "
        f"candidate within budget ({best.name}) reached {best.accuracy:.4f} "
        f"(drop {100 * (run.base_accuracy - best.accuracy):.2f} points) at "
        f"{budget.describe(best.cost)}{verified}"
    )
