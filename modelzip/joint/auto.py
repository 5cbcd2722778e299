"""Automatic compression to a budget: per-layer ranks, bit-widths and sparsities, chosen for you.

``auto_compress(model, data, parse_budget("size=50kB"), AutoConfig(max_drop=0.5))``

1. Cost each layer's options (:mod:`modelzip.joint.search`): the model with only that layer
   compressed, costed by the budget's :class:`~modelzip.joint.budget.CostModel`; measured latency
   is timed per layer on the layer's own input, interleaved with the dense layer
   (:mod:`modelzip.core.timing`), so that the table is not whole-model timer noise.
2. Refuse an infeasible budget early: the cheapest allowed setting is built and measured, and if
   it misses the budget, :class:`InfeasibleBudgetError` says what it reached.
3. Search: ``greedy`` (sensitivity-guided, from :func:`~modelzip.joint.sensitivity.run_sensitivity`
   on a validation split) or ``evolution``; the candidates explored are evaluated for real on
   the validation split and form the Pareto front (accuracy against cost). The greedy's last
   step into the budget can be a large one that makes its earlier steps unnecessary; its choice
   is also evaluated *relaxed* (:func:`_relax`: layers moved back to milder options while the
   predicted cost stays within the budget), so the model is not compressed beyond the budget.
4. Verify: the chosen setting is built, fine-tuned briefly on the training part (never the
   validation or test images), and its cost measured again — latency is searched with a safety
   margin under the budget and re-measured; a model that misses the budget or the tolerated
   accuracy drop is never returned: the next candidate is tried, then the error is raised.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

from torch import nn

from modelzip.core.config import MethodConfig
from modelzip.core.frozen import ConfigBase, check_range
from modelzip.core.running import model_device
from modelzip.joint.budget import Budget, CostModel, InfeasibleBudgetError
from modelzip.joint.pareto import Point, mark_pareto, points_document
from modelzip.joint.search import Evaluated, Option, SearchSpace, Setting, evolve, greedy_path
from modelzip.joint.sensitivity import (
    SensitivityConfig,
    SensitivityResult,
    accuracy,
    analysed_layers,
    compress_one,
    layer_config,
    run_sensitivity,
    training_split,
    validation_split,
)

#: A layer timed less than this fraction faster than its dense form is not counted as faster:
#: on a shared CPU, repeated medians of the same layer differ by a few percent.
_TIMER_NOISE = 0.05


@dataclasses.dataclass(frozen=True)
class AutoConfig(ConfigBase):
    """How automatic compression searches and verifies.

    Parameters
    ----------
    search:
        ``greedy`` (sensitivity-guided) or ``evolution``.
    max_drop:
        Tolerated validation accuracy drop, in percentage points.
    budget_evals:
        Candidates evaluated for real by the search (the Pareto front's points).
    population:
        Population of the evolutionary search.
    finetune_epochs, finetune_samples, finetune_lr:
        The short fine-tune of the chosen model (Adam, cosine), on at most ``finetune_samples``
        training images; 0 epochs skips it.
    latency_margin:
        Latency budgets are searched at ``(1 - margin) x budget``, then re-measured.
    verify_attempts:
        Candidates built and fine-tuned before giving up.
    accelerator:
        Preset or spec file costing ``energy`` and ``cycles`` budgets.
    sensitivity:
        Methods, knob values and validation split (also the search space of both searches).
    """

    search: Literal["greedy", "evolution"] = "greedy"
    max_drop: float = 0.5
    budget_evals: int = 30
    population: int = 8
    finetune_epochs: int = 1
    finetune_samples: int = 10000
    finetune_lr: float = 5e-4
    latency_margin: float = 0.1
    verify_attempts: int = 3
    accelerator: str = "eyeriss"
    seed: int = 0
    sensitivity: SensitivityConfig = dataclasses.field(default_factory=SensitivityConfig)

    def validate(self) -> None:
        check_range(self, "max_drop", 0.0, 100.0)
        check_range(self, "budget_evals", 1)
        check_range(self, "population", 2)
        check_range(self, "finetune_epochs", 0)
        check_range(self, "finetune_samples", 1)
        check_range(self, "finetune_lr", 0.0, low_open=True)
        check_range(self, "latency_margin", 0.0, 0.9)
        check_range(self, "verify_attempts", 1)
        check_range(self, "seed", 0)


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
            "explored": len(self.points),
        }


class _Auto:
    """One run's state: data splits, the cost model, and the real evaluation of settings."""

    def __init__(
        self, model: nn.Module, data: Any, budget: Budget, config: AutoConfig, progress: bool
    ) -> None:
        self.model = copy.deepcopy(model).eval()
        self.data = data
        self.budget = budget
        self.config = config
        self.progress = progress
        self.x, self.y = validation_split(data, config.sensitivity.validation_size)
        self.sample = self.x[:64].to(model_device(self.model))
        self.cost = CostModel(budget, self.sample, config.accelerator)
        self.target = budget.limit * (1 - config.latency_margin if budget.kind == "latency" else 1)
        self.base_accuracy = accuracy(self.model, self.x, self.y)
        # A timed baseline is the best of three medians: other processes' load only adds time,
        # and an inflated baseline would make the search think layers are faster than they are.
        rounds = 3 if budget.kind == "latency" else 1
        self.base_cost = min(self.cost(self.model) for _ in range(rounds))
        self.points: list[Point] = []

    def build(self, space: SearchSpace, setting: Setting) -> tuple[nn.Module, Any]:
        """The model of ``setting`` (in eval mode) and the report of building it."""
        from modelzip.api import compress

        small, report = compress(self.model, space.recipe(setting), evaluate=False, measure=False)
        return small.eval(), report

    def evaluate(self, space: SearchSpace, setting: Setting, name: str) -> Evaluated:
        """Build ``setting``, measure accuracy and cost, and record it as an explored point."""
        from modelzip.recipe import Recipe

        small, _ = self.build(space, setting)
        e = Evaluated(setting, accuracy(small, self.x, self.y), self.cost(small))
        recipe = Recipe.of(space.recipe(setting)).to_list()
        point = Point(name, recipe, e.accuracy, cost=e.cost, **self.columns(small, e.cost))
        self.points.append(point)
        return e

    def columns(self, model: nn.Module, cost: float) -> dict[str, Any]:
        """The size, MACs and the latency or energy column (the budget's cost) of a point."""
        from modelzip.core.counting import collect_workloads, module_bytes

        kind = self.budget.kind
        joules = kind == "energy" and not self.budget.native_unit
        workloads = collect_workloads(model, self.sample[:1])
        return {
            "size_bytes": int(module_bytes(model)),
            "macs": int(sum(w.effective_macs for w in workloads)),
            "latency_ms": cost if kind == "latency" else None,
            "energy_uj": cost if joules else None,
        }

    def baseline(self) -> dict[str, Any]:
        columns = self.columns(self.model, self.base_cost)
        return {"accuracy": self.base_accuracy, **columns, "cost": self.base_cost}

    # --- search space ---------------------------------------------------------------------

    def space(self, sensitivity: SensitivityResult | None) -> SearchSpace:
        """Options of each layer with a positive predicted cost reduction."""
        pairs = analysed_layers(self.model, self.config.sensitivity)
        layers = list(dict.fromkeys(layer for layer, _ in pairs))
        if self.budget.kind == "latency":
            costs, base = self._layer_latencies(pairs), None
        else:
            costs, base = self._costs(pairs), self.base_cost
        options, reduction, loss = [], [], []
        for layer in layers:
            opts, red, lost = [Option()], [0.0], [0.0]
            for lyr, method in pairs:
                if lyr != layer:
                    continue
                curve = sensitivity.curve(layer, method) if sensitivity else None
                for k, value in enumerate(self.config.sensitivity.values(method)):
                    key = (layer, method, value)
                    if key not in costs:
                        continue
                    if base is None:  # timed layers: a gain within timer noise is no gain
                        dense, new = costs[key]
                        gain = dense - new if new < (1 - _TIMER_NOISE) * dense else 0.0
                    else:
                        gain = base - costs[key]
                    if gain <= 0:
                        continue  # never lowers this budget's cost: not worth its accuracy
                    opts.append(Option(method, value))
                    red.append(gain)
                    lost.append(max(self.base_accuracy - curve.accuracy[k], 0.0) if curve else 0.0)
            options.append(opts)
            reduction.append(red)
            loss.append(lost)
        return SearchSpace(layers, options, reduction, loss, self.base_cost)

    def _costs(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str, float], float]:
        costs = {}
        for layer, method in pairs:
            for value in self.config.sensitivity.values(method):
                small = compress_one(self.model, layer_config(method, value, layer))
                if small is not None:
                    costs[(layer, method, value)] = self.cost(small)
        return costs

    def _layer_latencies(self, pairs: list[tuple[str, str]]) -> dict[Any, Any]:
        """``(layer, method, value) -> (dense layer ms, compressed layer ms)`` on the layer's
        own recorded input, the two timed side by side."""
        from modelzip.core.running import run_hooked
        from modelzip.core.timing import time_interleaved

        inputs: dict[str, tuple[Any, ...]] = {}

        def record(name: str) -> Any:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                inputs.setdefault(name, args)

            return hook

        names = dict.fromkeys(layer for layer, _ in pairs)
        hooks = [(self.model.get_submodule(n), record(n)) for n in names]
        run_hooked(self.model, self.sample, hooks)

        def side_by_side(
            dense: nn.Module, new: nn.Module, args: tuple[Any, ...]
        ) -> tuple[float, float]:
            # Interleaved, so that load from other processes slows both layers alike; medians
            # of at least 0.4 s of calls (20 to 200 rounds), the first calls left out.
            a, b = time_interleaved([dense, new.eval()], args, reps=20, warmup=3,
                                    min_seconds=0.4, max_reps=200, grad="inference")  # fmt: skip
            return a.ms, b.ms

        costs = {}
        for layer, method in pairs:
            for value in self.config.sensitivity.values(method):
                small = compress_one(self.model, layer_config(method, value, layer))
                if small is not None and layer in inputs:
                    dense = self.model.get_submodule(layer)
                    new = small.get_submodule(layer)
                    costs[(layer, method, value)] = side_by_side(dense, new, inputs[layer])
        return costs

    # --- verification ---------------------------------------------------------------------

    def finetune(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` fine-tuned on the training part (validation images excluded)."""
        from modelzip.train import TrainConfig, train

        (x, y), _ = training_split(self.data)
        n = self.config.finetune_samples
        part = dataclasses.replace(self.data, x_train=x[:n], y_train=y[:n])
        tuned = copy.deepcopy(model)
        cfg = TrainConfig(
            epochs=self.config.finetune_epochs,
            lr=self.config.finetune_lr,
            optimizer="adam",
            weight_decay=0.0,
            schedule="cosine",
            val_size=0,
            seed=self.config.seed,
        )
        train(tuned, part, cfg, progress=self.progress)
        return tuned.eval()

    def measure_final(self, model: nn.Module) -> float:
        """The final model's cost; a latency is re-measured as the baseline was (best of three
        medians), after the candidate's first timing already met the budget with its margin."""
        if self.budget.kind == "latency":
            return min(self.cost(model) for _ in range(3))
        return self.cost(model)

    def verify(self, space: SearchSpace, setting: Setting) -> tuple[nn.Module, float, float, Any]:
        """(model, validation accuracy, cost, report) of ``setting`` after the fine-tune (the
        untuned weights are kept when the fine-tune did not help)."""
        small, report = self.build(space, setting)
        acc = accuracy(small, self.x, self.y)
        tuned = False
        if self.config.finetune_epochs and space.recipe(setting):
            candidate = self.finetune(small)
            tuned_acc = accuracy(candidate, self.x, self.y)
            if tuned_acc >= acc:
                small, acc, tuned = candidate, tuned_acc, True
        report.before.accuracy, report.after.accuracy = self.base_accuracy, acc
        report.finetune_epochs = self.config.finetune_epochs if tuned else 0
        return small, acc, self.measure_final(small), report


def _order(found: list[Evaluated], target: float) -> list[Evaluated]:
    """Candidates to verify: the most accurate within the budget first (ties: the less
    compressed, i.e. the costlier, first; along the greedy path that is the earlier state)."""
    feasible = [e for e in found if e.cost <= target]
    return sorted(feasible, key=lambda e: (-e.accuracy, -e.cost))


def _relax(space: SearchSpace, setting: Setting, target: float) -> Setting:
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


def auto_compress(
    model: nn.Module,
    data: Any,
    budget: Budget,
    config: AutoConfig | None = None,
    *,
    model_name: str = "model",
    sensitivity: SensitivityResult | None = None,
    progress: bool = False,
) -> AutoResult:
    """Compress ``model`` to ``budget`` within ``config.max_drop`` points of validation accuracy.

    Returns an :class:`AutoResult` with the chosen recipe (one step per compressed layer, selected
    by name, replayable by :func:`modelzip.compress`), the model, and every explored point with
    its Pareto flag. Raises :class:`InfeasibleBudgetError` (naming the best reachable cost and
    accuracy) when no allowed setting meets the budget within the tolerated drop. ``model`` is
    never changed. The greedy search runs the sensitivity analysis of ``config.sensitivity``
    unless given its ``sensitivity`` result (of the same model, data and config).
    """
    from modelzip.progress import progress_bar
    from modelzip.recipe import Recipe

    config = config or AutoConfig()
    run = _Auto(model, data, budget, config, progress)
    if config.search == "greedy" and sensitivity is None:
        sensitivity = run_sensitivity(
            run.model, data, config.sensitivity, model_name=model_name, progress=progress
        )
    space = run.space(sensitivity)

    cheapest = run.evaluate(space, space.cheapest(), "cheapest")
    if cheapest.cost > run.target:
        margin = f" (searched under {run.target:.6g} ms, a safety margin)"
        raise InfeasibleBudgetError(
            f"budget {budget.describe()} is out of reach: the most aggressive allowed settings "
            f"({_short(space, cheapest.setting)}) cost {budget.describe(cheapest.cost)} "
            f"(baseline {budget.describe(run.base_cost)}) at validation accuracy "
            f"{cheapest.accuracy:.4f}" + (margin if budget.kind == "latency" else "")
        )

    with progress_bar("auto", config.budget_evals, enabled=progress) as bar:
        if config.search == "greedy":
            path = greedy_path(space)
            first = next((s for s in path if space.predicted_cost(s) <= run.target), path[-1])
            relaxed = _relax(space, first, run.target)
            # The relaxed choice, when the path does not hold it, takes one of the evaluations.
            extra = config.budget_evals > 1 and relaxed not in path
            found = [cheapest]
            for i in _greedy_indices(path, space, run.target, config.budget_evals - extra):
                if path[i] != cheapest.setting:
                    found.append(run.evaluate(space, path[i], f"greedy-{i}"))
                bar.advance()
            if extra:
                found.append(run.evaluate(space, relaxed, "greedy-relaxed"))
                bar.advance()
        else:

            def evaluate(setting: Setting) -> Evaluated:
                bar.advance()
                if setting == cheapest.setting:
                    return cheapest
                return run.evaluate(space, setting, f"evolution-{len(run.points)}")

            found = evolve(
                space, evaluate, run.target, evaluations=config.budget_evals,
                population=config.population, seed=config.seed,
            )  # fmt: skip
    mark_pareto(run.points)

    tried = []
    for e in _order(found, run.target)[: config.verify_attempts]:
        small, acc, cost, report = run.verify(space, e.setting)
        drop = 100 * (run.base_accuracy - acc)
        tried.append((e, acc, cost))
        if cost <= budget.limit and drop <= config.max_drop + 1e-9:
            steps = Recipe.of(space.recipe(e.setting)).to_list()
            chosen = next(p for p in run.points if p.recipe == steps)
            final = dataclasses.replace(chosen, name="chosen", accuracy=acc, cost=cost)
            if budget.kind == "latency":
                final.latency_ms = cost
            return AutoResult(
                model=small,
                recipe=space.recipe(e.setting),
                settings=space.describe(e.setting),
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
            )
    within = [e for e in found if e.cost <= run.target]
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
        f"candidate within budget reached {best.accuracy:.4f} "
        f"(drop {100 * (run.base_accuracy - best.accuracy):.2f} points) at "
        f"{budget.describe(best.cost)}{verified}"
    )


def _short(space: SearchSpace, setting: Setting) -> str:
    parts = [f"{d['layer']}: {space.options[i][setting[i]].describe()}"
             for i, d in enumerate(space.describe(setting))]  # fmt: skip
    return ", ".join(parts)
