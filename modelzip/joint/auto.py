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
   is also evaluated *relaxed* (:func:`_relax`: layers moved back to milder options while the
   predicted cost stays within the budget), so the model is not compressed beyond the budget.
   Every candidate built is recorded in a :class:`~modelzip.joint.auto_trail.Trail` (in the run
   directory's sweep store from the command line), and one already recorded is not built again.
4. Verify: the chosen setting is built, fine-tuned briefly on the training part (never the
   validation or test images), and its cost measured again — latency is searched with a safety
   margin under the budget and re-measured; a model that misses the budget or the tolerated
   accuracy drop is never returned: the next candidate is tried, then the error is raised.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Literal

from torch import nn

from modelzip.core.config import MethodConfig
from modelzip.core.errors import ConfigError
from modelzip.core.frozen import ConfigBase, check_range
from modelzip.core.running import model_device
from modelzip.joint.auto_families import (
    FAMILIES,
    availability,
    describe_steps,
    family_candidates,
    split_post_training,
)
from modelzip.joint.auto_trail import TASK_KIND, Trail, model_fingerprint, task_key
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
    families:
        What is searched (default: all of :data:`~modelzip.joint.auto_families.FAMILIES`):
        ``layer`` (one method of ``sensitivity.methods`` per layer), ``channel_prune``,
        ``int8`` (static), ``channel_prune+int8``, ``prune+quantize``,
        ``decompose+quantize``.
    family_evals:
        Whole-model candidates evaluated for accuracy per family: the mildest (costliest)
        within the budget.
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
    families: tuple[str, ...] = FAMILIES
    family_evals: int = 3

    def validate(self) -> None:
        for family in self.families:
            if family not in FAMILIES:
                raise ConfigError(f"AutoConfig.families has {family!r}; allowed: {list(FAMILIES)}")
        if not self.families:
            raise ConfigError(f"AutoConfig.families is empty; allowed: {list(FAMILIES)}")
        check_range(self, "family_evals", 1)
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


@dataclasses.dataclass(frozen=True)
class _Found:
    """A candidate evaluated for real: its recipe, validation accuracy, cost and description."""

    recipe: tuple[MethodConfig, ...]
    accuracy: float
    cost: float
    name: str
    family: str
    settings: list[dict[str, Any]]


class _Auto:
    """One run's state: data splits, the cost model, and the real evaluation of settings."""

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        budget: Budget,
        config: AutoConfig,
        progress: bool,
        trail: Trail | None = None,
    ) -> None:
        self.model = copy.deepcopy(model).eval()
        self.data = data
        self.budget = budget
        self.config = config
        self.progress = progress
        self.trail = trail if trail is not None else Trail()
        self.x, self.y = validation_split(data, config.sensitivity.validation_size)
        self.sample = self.x[:64].to(model_device(self.model))
        self.cost = CostModel(budget, self.sample, config.accelerator)
        self.target = budget.limit * (1 - config.latency_margin if budget.kind == "latency" else 1)
        self.base_accuracy = accuracy(self.model, self.x, self.y)
        self.latency = budget.kind == "latency"
        self.anchor = self.model
        if self.latency:
            from modelzip.deploy import dense_anchor

            # The dense model deployed as a candidate is: in its fastest memory layout here.
            self.anchor = dense_anchor(self.model, self.sample)
        # A timed baseline is the best of three medians: other processes' load only adds time,
        # and an inflated baseline would make the search think layers are faster than they are.
        rounds = 3 if self.latency else 1
        self.base_cost = min(self.cost(self.anchor) for _ in range(rounds))
        self.points: list[Point] = []
        self._pointed: set[str] = set()
        self.unavailable: list[dict[str, Any]] = []
        self._task_base = {
            "kind": TASK_KIND,
            "model": model_fingerprint(self.model),
            "budget": budget.kind,
            "native_unit": budget.native_unit,
            "accelerator": str(config.accelerator) if budget.needs_accelerator else None,
            "validation_size": len(self.x),
        }

    def build(self, recipe: list[MethodConfig] | tuple[MethodConfig, ...]) -> tuple[nn.Module, Any]:
        """The trainable model of ``recipe`` (in eval mode) and the report of building it."""
        from modelzip.api import compress

        small, report = compress(self.model, list(recipe), self.data, sample=self.sample,
                                 evaluate=False, measure=False, deploy=False)  # fmt: skip
        return small.eval(), report

    def measure(self, small: nn.Module) -> dict[str, Any]:
        """The budget's cost of ``small``; a latency on its deployed form, as a ratio to the
        dense anchor timed side by side (interleaved, warm), times the baseline's latency."""
        if not self.latency:
            return {"cost": self.cost(small)}
        from modelzip.deploy import materialize, time_against

        deployed, _ = materialize(small, self.sample)
        dense, new = time_against(self.anchor, deployed, self.sample)
        ratio = new.median / dense.median
        return {"ratio": ratio, "deployed_ms": new.ms, "dense_ms": dense.ms}

    def _cost_of(self, result: dict[str, Any]) -> float:
        # A latency is kept as a ratio, so a resumed run scales it by its own baseline.
        return result["ratio"] * self.base_cost if self.latency else result["cost"]

    def candidate(
        self,
        recipe: list[MethodConfig] | tuple[MethodConfig, ...],
        name: str,
        family: str,
        *,
        with_accuracy: bool = True,
    ) -> dict[str, Any] | None:
        """Cost (and accuracy) of ``recipe``, from the trail or built now and recorded; None when
        it changes no layer. The result's ``cost`` is in the budget's unit."""
        from modelzip.recipe import Recipe

        steps = Recipe.of(list(recipe)).to_list()
        task = {**self._task_base, "name": name, "family": family, "recipe": steps}
        key = task_key(task)
        found = self.trail.get(key)
        complete = found is not None and (
            not with_accuracy or not found.get("changed") or found.get("accuracy") is not None
        )
        if complete and found is not None:
            self.trail.resumed += 1
            result = found
        else:
            t0 = time.perf_counter()
            small, report = self.build(recipe)
            self.trail.evaluated += 1
            if not report.layers:
                result = {"changed": 0}
            else:
                result = {**(found or self.measure(small)), "changed": len(report.layers)}
                result.update(self.columns(small))
                if with_accuracy:
                    result["accuracy"] = accuracy(small, self.x, self.y)
            result["seconds"] = time.perf_counter() - t0
            self.trail.put(key, task, result)
        if not result.get("changed"):
            return None
        out = {**result, "cost": self._cost_of(result)}
        if self.latency:
            out["latency_ms"] = out["cost"]
        if self.budget.kind == "energy" and not self.budget.native_unit:
            out["energy_uj"] = out["cost"]
        if out.get("accuracy") is not None and key not in self._pointed:
            self._pointed.add(key)
            columns = {k: out.get(k) for k in ("size_bytes", "macs", "latency_ms", "energy_uj")}
            self.points.append(Point(name, steps, out["accuracy"], cost=out["cost"], **columns))
        return out

    def evaluate(self, space: SearchSpace, setting: Setting, name: str) -> Evaluated:
        """Build ``setting``, measure accuracy and cost, and record it as an explored point."""
        out = self.candidate(space.recipe(setting), name, "layer")
        if out is None:  # keeps every layer: the baseline
            return Evaluated(setting, self.base_accuracy, self.base_cost)
        return Evaluated(setting, out["accuracy"], out["cost"])

    def families(self) -> tuple[list[_Found], list[float]]:
        """The whole-model candidates: every available one costed, the mildest within the
        budget of each family evaluated (``family_evals`` of them); returns those evaluated and
        the costs of all."""
        from modelzip.progress import progress_bar

        whole = [f for f in self.config.families if f != "layer"]
        candidates = family_candidates(tuple(whole), self.config.sensitivity)
        reasons: dict[tuple[str, ...], str] = {}
        costed: list[tuple[Any, float]] = []
        with progress_bar("families", len(candidates), enabled=self.progress) as bar:
            for c in candidates:
                bar.advance()
                if len(c.steps) > 1 and c.methods not in reasons:
                    reasons[c.methods] = availability(self.model, c, self.data, self.sample)
                    if reasons[c.methods]:
                        entry = {"family": c.family, "methods": list(c.methods),
                                 "reason": reasons[c.methods]}  # fmt: skip
                        self.unavailable.append(entry)
                if reasons.get(c.methods):
                    continue
                out = self.candidate(c.steps, c.name, c.family, with_accuracy=False)
                if out is not None:
                    costed.append((c, out["cost"]))
        found = []
        for family in whole:
            within = [(c, cost) for c, cost in costed if c.family == family and cost <= self.target]
            within.sort(key=lambda pair: -pair[1])  # the mildest first
            for c, _ in within[: self.config.family_evals]:
                out = self.candidate(c.steps, c.name, c.family)
                if out is not None:
                    found.append(_Found(c.steps, out["accuracy"], out["cost"], c.name, c.family,
                                        describe_steps(c.steps)))  # fmt: skip
        return found, [cost for _, cost in costed]

    def columns(self, model: nn.Module) -> dict[str, Any]:
        """The size and MACs columns of a point."""
        from modelzip.core.counting import collect_workloads, module_bytes

        workloads = collect_workloads(model, self.sample[:1])
        return {
            "size_bytes": int(module_bytes(model)),
            "macs": int(sum(w.effective_macs for w in workloads)),
        }

    def baseline(self) -> dict[str, Any]:
        kind = self.budget.kind
        joules = kind == "energy" and not self.budget.native_unit
        return {
            "accuracy": self.base_accuracy,
            **self.columns(self.model),
            "latency_ms": self.base_cost if kind == "latency" else None,
            "energy_uj": self.base_cost if joules else None,
            "cost": self.base_cost,
        }

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
        """The final model's cost; a latency is re-measured on the deployed form as the baseline
        was (best of three), after the candidate's first timing already met the budget with its
        margin."""
        if self.latency:
            return min(self.measure(model)["ratio"] for _ in range(3)) * self.base_cost
        return self.cost(model)

    def verify(self, recipe: tuple[MethodConfig, ...]) -> tuple[nn.Module, float, float, Any]:
        """(model, validation accuracy, cost, report) of ``recipe`` after the fine-tune (the
        untuned weights are kept when the fine-tune did not help). Trailing post-training steps
        (static int8) are applied after the fine-tune, as they would be deployed."""
        from modelzip.api import compress

        small, report = self.build(recipe)
        acc = accuracy(small, self.x, self.y)
        tuned = False
        trained, after = split_post_training(list(recipe))
        if self.config.finetune_epochs and trained:
            candidate = self.finetune(self.build(trained)[0] if after else small)
            if after:
                candidate, _ = compress(candidate, after, self.data, sample=self.sample,
                                        evaluate=False, measure=False, deploy=False)  # fmt: skip
                candidate.eval()
            tuned_acc = accuracy(candidate, self.x, self.y)
            if tuned_acc >= acc:
                small, acc, tuned = candidate, tuned_acc, True
        report.before.accuracy, report.after.accuracy = self.base_accuracy, acc
        report.finetune_epochs = self.config.finetune_epochs if tuned else 0
        return small, acc, self.measure_final(small), report


def _order(found: list[_Found], target: float) -> list[_Found]:
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
    run = _Auto(model, data, budget, config, progress, trail)
    found, family_costs = run.families()
    space = None
    if "layer" in config.families:
        if config.search == "greedy" and sensitivity is None:
            sensitivity = run_sensitivity(
                run.model, data, config.sensitivity, model_name=model_name, progress=progress
            )
        space = run.space(sensitivity)
        found.extend(_layer_search(run, space, family_costs, bar_enabled=progress))
    elif not found:
        _refuse_families(run, family_costs)
    mark_pareto(run.points)

    tried = []
    for e in _order(found, run.target)[: config.verify_attempts]:
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
        _refuse_families(run, family_costs)
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


def _refuse_families(run: _Auto, family_costs: list[float]) -> None:
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


def _layer_search(
    run: _Auto, space: SearchSpace, family_costs: list[float], *, bar_enabled: bool
) -> list[_Found]:
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
            relaxed = _relax(space, first, run.target)
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
        _Found(
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
