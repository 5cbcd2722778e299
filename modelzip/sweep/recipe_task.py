"""The ``recipe`` task: compress the base model with one recipe, fine-tune, measure.

Runs in a worker. The base model and data are loaded once per worker process and reused by every
task on the same base (``compress`` copies the model, so tasks cannot affect each other).

The model is built by :func:`modelzip.model_source.load_model`, that is through
:func:`modelzip.models.resolve_model` (or, for a saved file,
:func:`modelzip.models.build_from_source`) with the caller's trust alone (its
``trust_remote_code`` scopes :func:`~modelzip.models.registry.trusting_remote_code`): the task
carries ``"trust_remote_code": true`` only when :func:`make_recipe_task` was told so, and the
base (read from the sweep file) has no say.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch

from modelzip.sweep.grid import SweepBase, SweepPoint

__all__ = ["make_recipe_task", "run_recipe_task"]


def make_recipe_task(
    base: SweepBase, point: SweepPoint, *, trust_remote_code: bool = False
) -> dict[str, Any]:
    """The task dict of one sweep point; ``trust_remote_code`` is the caller's (see above).

    Untrusted tasks carry no trust key at all, so their keys do not change with this option.
    """
    task = {"kind": "recipe", "name": point.name, "base": base.to_dict(), "recipe": point.recipe}
    if trust_remote_code:
        task["trust_remote_code"] = True
    return task


@functools.lru_cache(maxsize=2)
def _load_base(
    base_json: str, trust_remote_code: bool = False
) -> tuple[torch.nn.Module, Any, torch.Tensor | None]:
    from modelzip.api import model_device, sample_from
    from modelzip.data import Dataset
    from modelzip.model_source import dataset_for, load_model

    base = SweepBase.from_dict(json.loads(base_json))
    full = dataset_for(base.dataset, base.model)
    # The fixed evaluation subset: the same samples for every point and every worker.
    data = (
        full.subset(train=base.train_size, test=base.eval_size, seed=0)
        if isinstance(full, Dataset)
        else full
    )
    torch.manual_seed(base.seed)
    model = load_model(
        base.model,
        base.weights,
        base.dataset,
        pretrained=base.pretrained,
        progress=False,
        data=full,
        trust_remote_code=trust_remote_code,
    )
    model.eval()
    return model, data, sample_from(data, model_device(model))


def prepare_base(base: SweepBase, *, trust_remote_code: bool = False) -> None:
    """Load (and, for a zoo baseline not yet cached, train) the base model once, in the parent.

    Workers then find the baseline in the cache instead of each training it, and a bad model
    name or data set (or a model reference that is not trusted) fails here with a clear message
    before any worker starts.
    """
    _load_base(json.dumps(base.to_dict(), sort_keys=True), trust_remote_code)


def run_recipe_task(task: dict[str, Any]) -> dict[str, Any]:
    """Compress, optionally fine-tune, and return accuracy, params, bytes, MACs, latency, energy."""
    from modelzip.api import compress, model_stats
    from modelzip.recipe import Recipe

    base = SweepBase.from_dict(task["base"])
    trusted = task.get("trust_remote_code") is True
    model, data, sample = _load_base(json.dumps(base.to_dict(), sort_keys=True), trusted)
    recipe = Recipe.from_list(task["recipe"])
    torch.manual_seed(base.seed)
    small, report = compress(
        model,
        recipe,
        data,
        finetune=base.finetune,
        sample=sample,
        evaluate=False,
        measure=False,
        seed=base.seed,
        deploy=bool(base.latency),  # latency is the deployed model's; otherwise no need
    )
    # MACs and energy of one inference; latency of the sample batch (as ``compress`` reports it).
    one = None if sample is None else sample[:1]
    stats = model_stats(small, one, data=data, measure=False)
    out: dict[str, Any] = {
        "accuracy": stats.accuracy,
        "params": stats.params,
        "size_bytes": stats.size_bytes,
        "macs": stats.macs,
        "effective_macs": stats.effective_macs,
        "latency_ms": None,
        "latency_batch": None,
        "energy_uj": None,
        "layers_changed": len(report.layers),
        "layers_skipped": len(report.skipped),
    }
    if base.latency and sample is not None:
        from modelzip.measure import measure_latency

        out["latency_ms"] = measure_latency(small, sample)
        out["latency_batch"] = int(sample.shape[0])
    if base.accelerator is not None and one is not None:
        out.update(_energy(small, one, base.accelerator))
    return out


def _energy(model: torch.nn.Module, sample: torch.Tensor, accelerator: str) -> dict[str, Any]:
    from modelzip.core.counting import collect_workloads
    from modelzip.hardware import estimate

    est = estimate(collect_workloads(model, sample), accelerator)
    total = float(est.total_energy)
    return {
        "energy": total,
        "energy_unit": est.energy_unit,
        # Only an absolute table (pJ) converts to microjoules; a normalized one stays relative.
        "energy_uj": total * 1e-6 if est.energy_unit == "pJ" else None,
        "cycles": int(est.cycles),
    }
