"""One run of automatic compression: data splits, cost model, the candidates it builds and
measures (recorded in the :class:`~modelzip.joint.auto_trail.Trail`, not built again when found
there), the whole-model families' candidates, and the verification of a choice."""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

from torch import nn

from modelzip.core.config import MethodConfig
from modelzip.core.running import model_device
from modelzip.joint.auto_config import AutoConfig
from modelzip.joint.auto_families import (
    availability,
    describe_steps,
    family_candidates,
    split_post_training,
)
from modelzip.joint.auto_trail import TASK_KIND, Trail, model_fingerprint, task_key
from modelzip.joint.budget import Budget, CostModel
from modelzip.joint.pareto import Point
from modelzip.joint.search import Evaluated, SearchSpace, Setting
from modelzip.joint.sensitivity import accuracy, training_split, validation_split


@dataclasses.dataclass(frozen=True)
class Found:
    """A candidate evaluated for real: its recipe, validation accuracy, cost and description."""

    recipe: tuple[MethodConfig, ...]
    accuracy: float
    cost: float
    name: str
    family: str
    settings: list[dict[str, Any]]


class AutoRun:
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

    def families(self) -> tuple[list[Found], list[float]]:
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
                    found.append(Found(c.steps, out["accuracy"], out["cost"], c.name, c.family,
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
