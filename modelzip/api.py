"""``compress``: walk the model, select layers, call each method's handler, build the Report."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import ModelError
from modelzip.inspect import collect_workloads, count_params, module_bytes
from modelzip.measure import measure_latency
from modelzip.recipe import Recipe
from modelzip.registry import SkipLayer, spec_for
from modelzip.report import LayerChange, ModelStats, Report, SkippedLayer
from modelzip.serialize import RECIPE_ATTR


def check_finite(model: nn.Module) -> None:
    """Refuse a model with NaN or Inf in a parameter or floating buffer, naming it."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and t.numel() and not torch.isfinite(t).all():
            bad = "NaN" if torch.isnan(t).any() else "Inf"
            raise ModelError(f"the model's {name!r} contains {bad}; refusing to compress it")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")


def model_stats(
    model: nn.Module,
    sample: Any = None,
    *,
    data: Any = None,
    measure: bool = True,
) -> ModelStats:
    """Parameters, bytes, MACs (given a sample), latency (if ``measure``), accuracy (with data)."""
    stats = ModelStats(params=count_params(model), size_bytes=module_bytes(model))
    if sample is not None:
        workloads = collect_workloads(model, sample)
        stats.macs = sum(w.macs for w in workloads)
        stats.effective_macs = sum(w.effective_macs for w in workloads)
        if measure:
            stats.latency_ms = measure_latency(model, sample)
            stats.latency_batch = int(sample.shape[0]) if isinstance(sample, torch.Tensor) else None
    if data is not None:
        from modelzip.train import evaluate

        stats.accuracy = float(evaluate(model, data)["accuracy"])
    return stats


def _sample_from(data: Any, device: torch.device, batch: int = 64) -> torch.Tensor | None:
    x = getattr(data, "x_test", None)
    if isinstance(x, torch.Tensor) and len(x):
        return x[:batch].to(device)
    test = getattr(data, "test", None)  # a text corpus: a batch of sequences
    if isinstance(test, torch.Tensor) and test.numel() >= 64:
        return test[: (test.numel() // 64) * 64][: 64 * 16].reshape(16, 64).to(device)
    return None


def _names_of(model: nn.Module) -> dict[int, list[str]]:
    """Every name under which each module object appears (shared modules appear several times)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


#: Modules whose forward reads their layers' ``.weight`` tensors directly (torch's fused
#: attention and transformer fast paths) instead of calling the layers; found by
#: tests/reliability/test_wild_models.py, where replacing ``linear1`` broke the forward pass.
WEIGHT_READERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _weight_reader(model: nn.Module, name: str) -> str | None:
    """The type name of an ancestor of layer ``name`` that reads its weight directly, if any."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = model.get_submodule(".".join(parts[:i]))
        if isinstance(parent, WEIGHT_READERS):
            return type(parent).__name__
    return None


def _keeps_dense_weight(new: nn.Module, old: nn.Module) -> bool:
    weight = getattr(new, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.shape == old.weight.shape


def _apply_layer_method(
    model: nn.Module, config: MethodConfig, handler: Any, ctx: Context
) -> tuple[list[LayerChange], list[SkippedLayer]]:
    changes: list[LayerChange] = []
    skipped: list[SkippedLayer] = []
    aliases = _names_of(model)
    for name, module in list(config.select.select(model, config.default_types)):
        try:
            new = handler(module, config, ctx)
        except SkipLayer as e:
            skipped.append(SkippedLayer(name, config.method, str(e)))
            continue
        if new is None or new is module:
            continue
        reader = _weight_reader(model, name)
        if reader is not None and not _keeps_dense_weight(new, module):
            reason = (
                f"inside {reader}, whose forward reads the layer's weight tensor directly; "
                f"a {type(new).__name__} has none"
            )
            skipped.append(SkippedLayer(name, config.method, reason))
            continue
        for alias in aliases.get(id(module), [name]):  # keep shared modules shared
            model.set_submodule(alias, new)
        changes.append(
            LayerChange(
                name=name,
                method=config.method,
                before=type(module).__name__,
                after=type(new).__name__,
                params_before=count_params(module),
                params_after=count_params(new),
                bytes_before=module_bytes(module),
                bytes_after=module_bytes(new),
                note=ctx.notes.pop(name, ""),
            )
        )
    return changes, skipped


def compress(
    model: nn.Module,
    recipe: Recipe | MethodConfig | Iterable[MethodConfig],
    data: Any = None,
    *,
    inplace: bool = False,
    finetune: Any = None,
    sample: torch.Tensor | None = None,
    evaluate: bool = True,
    measure: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, Report]:
    """Compress ``model`` with each step of ``recipe`` in order.

    Parameters
    ----------
    model:
        A trained model. It is deep-copied first unless ``inplace=True``, so the caller's model
        is never changed behind their back.
    recipe:
        A :class:`Recipe`, one method config, or a list of them.
    data:
        A data set (:func:`modelzip.data.load_dataset`). Needed by data-driven methods and for the
        accuracy and fine-tuning; a sample batch for MACs and latency is taken from it.
    finetune:
        A :class:`modelzip.train.TrainConfig` to fine-tune the compressed model on ``data``.
    sample:
        An input batch for counting MACs and timing (default: 64 test inputs of ``data``).
    evaluate, measure:
        Whether to measure accuracy (needs ``data``) and latency before and after.

    Returns
    -------
    (model, report):
        The compressed model and a :class:`Report` of what changed.
    """
    start = time.perf_counter()
    steps = Recipe.of(recipe)
    if not isinstance(model, nn.Module):
        raise ModelError(f"compress expects a torch.nn.Module, got {type(model).__name__}")
    check_finite(model)
    work = model if inplace else copy.deepcopy(model)
    device = model_device(work)
    if sample is None and data is not None:
        sample = _sample_from(data, device)
    eval_data = data if evaluate else None
    before = model_stats(work, sample, data=eval_data, measure=measure)

    ctx = Context(data=data, sample=sample, seed=seed, model=work)
    layers: list[LayerChange] = []
    skipped: list[SkippedLayer] = []
    for config in steps:
        spec = spec_for(config)
        if spec.scope == "model":
            changed = spec.handler(work, config, ctx) or []
            layers.extend(changed)
        else:
            changed, skips = _apply_layer_method(work, config, spec.handler, ctx)
            layers.extend(changed)
            skipped.extend(skips)
    history = list(getattr(work, RECIPE_ATTR, [])) + steps.to_list()
    setattr(work, RECIPE_ATTR, history)

    epochs = 0
    if finetune is not None:
        if data is None:
            raise ModelError("fine-tuning needs data: pass data=load_dataset(...)")
        from modelzip.train import train

        train(work, data, finetune, progress=progress)
        epochs = int(finetune.epochs)
    work.eval()
    after = model_stats(work, sample, data=eval_data, measure=measure)
    report = Report(
        recipe=steps.to_list(),
        before=before,
        after=after,
        layers=layers,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        finetune_epochs=epochs,
    )
    return work, report
