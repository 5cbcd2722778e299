"""Per-layer sensitivity: validation accuracy against each method's knob, one layer at a time.

For every selected layer and method, the model is compressed at that one layer only (no
fine-tuning) at each knob value — rank fraction for decompositions, bit-width for weight
quantization, sparsity for magnitude pruning — and evaluated on a validation split carved from the
training set (the images :func:`modelzip.train.train` held out when the baseline was trained), never
on the test set. Candidates are independent, so ``workers > 1`` spreads them over a
:class:`concurrent.futures.ProcessPoolExecutor` (one torch thread per worker).

The result is data (:meth:`SensitivityResult.to_dict`, the run directory's ``sensitivity.json``)
and plots (:func:`plot_sensitivity`, one PNG of curves per method).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from modelzip.core.config import MethodConfig
from modelzip.core.errors import ConfigError, DataError
from modelzip.core.frozen import ConfigBase, check_range
from modelzip.core.registry import Knob
from modelzip.core.selection import Select

#: The SensitivityConfig field that overrides the swept values of each knob field; a method's knob
#: (declared at registration, :class:`modelzip.core.registry.Knob`) on another field sweeps the
#: values it declares.
_VALUES_FIELD = {"rank_fraction": "rank_fractions", "bits": "bit_widths", "sparsity": "sparsities"}


def knob_of(method: str) -> Knob:
    """The knob ``method`` declared at registration (:class:`ConfigError` if none)."""
    from modelzip.core.registry import get_method, knob_methods

    knob = get_method(method).knob
    if knob is None:
        raise ConfigError(
            f"method {method!r} has no knob to sweep; methods with one: {knob_methods()}"
        )
    return knob


@dataclasses.dataclass(frozen=True)
class SensitivityConfig(ConfigBase):
    """What the sensitivity analysis sweeps.

    Parameters
    ----------
    methods:
        Registered methods that declare a knob (:func:`modelzip.core.registry.knob_methods`).
    rank_fractions, bit_widths, sparsities:
        Knob values of the decompositions, of ``quantize_weights`` and of ``magnitude_prune``.
        Sparsity 0 keeps every weight, so its point equals the baseline accuracy exactly.
    validation_size:
        Validation images used (the first ones of the held-out split).
    workers:
        Processes evaluating candidates; 1 runs them in this process.
    select:
        Which layers to analyse (default: every ``Linear`` and ``Conv2d``).
    """

    methods: tuple[str, ...] = ("svd", "quantize_weights", "magnitude_prune")
    rank_fractions: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5, 0.75)
    bit_widths: tuple[int, ...] = (2, 3, 4, 6, 8)
    sparsities: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
    validation_size: int = 2000
    workers: int = 1
    select: Select = dataclasses.field(default_factory=Select)

    def validate(self) -> None:
        from modelzip.core.registry import knob_methods

        for m in self.methods:
            if m not in knob_methods():
                raise ConfigError(
                    f"SensitivityConfig.methods has {m!r}; allowed methods: {knob_methods()}"
                )
        if not self.methods:
            raise ConfigError("SensitivityConfig.methods is empty; give at least one method")
        checks = (("rank_fractions", 0.0, 1.0, True, False), ("bit_widths", 1, 16, False, False))
        for name, lo, hi, lo_open, hi_open in (*checks, ("sparsities", 0.0, 1.0, False, True)):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"SensitivityConfig.{name} is empty")
            for v in values:
                probe = SimpleNamespace(value=v)
                try:
                    check_range(probe, "value", lo, hi, low_open=lo_open, high_open=hi_open)
                except ConfigError as e:
                    msg = str(e).replace("SimpleNamespace.value", f"SensitivityConfig.{name}")
                    raise ConfigError(msg) from None
        check_range(self, "validation_size", 1)
        check_range(self, "workers", 1)

    def values(self, method: str) -> tuple[float, ...]:
        """The knob values swept for ``method``, in the given order."""
        knob = knob_of(method)
        field = _VALUES_FIELD.get(knob.field)
        return tuple(getattr(self, field)) if field else knob.values


@dataclasses.dataclass(frozen=True)
class Curve:
    """Accuracy of one layer under one method at each knob value (None: the method skipped it)."""

    layer: str
    method: str
    knob: str
    values: tuple[float, ...]
    accuracy: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "values": list(self.values),
            "accuracy": list(self.accuracy),
        }


@dataclasses.dataclass
class SensitivityResult:
    """Curves of every (layer, method), and the baseline they start from."""

    model: str
    dataset: str
    baseline_accuracy: float
    curves: list[Curve]

    def curve(self, layer: str, method: str) -> Curve | None:
        return next((c for c in self.curves if (c.layer, c.method) == (layer, method)), None)

    def to_dict(self) -> dict[str, Any]:
        """The run directory's ``sensitivity.json``."""
        return {**dataclasses.asdict(self), "curves": [c.to_dict() for c in self.curves]}


def validation_split(data: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` images of the validation part that :func:`modelzip.train.train` holds
    out of the training set (same seed, same cap), so a zoo baseline never trained on them."""
    from modelzip.data import Dataset

    if not isinstance(data, Dataset):
        raise DataError(f"sensitivity needs an image Dataset, got {type(data).__name__}")
    x, y = training_split(data)[1]
    if len(x) == 0:
        raise DataError(f"{data.name} has too few training images for a validation split")
    return x[:size], y[:size]


def training_split(data: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """``((x_train, y_train), (x_val, y_val))`` as :func:`modelzip.train.train` splits ``data``."""
    from modelzip.train import TrainConfig, train_val_split

    return train_val_split(data, TrainConfig.val_size)


def layer_config(method: str, value: float, layer: str) -> MethodConfig:
    """The config of ``method`` at knob ``value`` applied to exactly the layer named ``layer``."""
    from modelzip.core.registry import get_method

    spec = get_method(method)
    return knob_of(method).config(spec.config_type, value, select=Select(names=(re.escape(layer),)))


def analysed_layers(model: nn.Module, config: SensitivityConfig) -> list[tuple[str, str]]:
    """``(layer, method)`` pairs to analyse: selected layers of each method's own types."""
    from modelzip.core.registry import get_method

    pairs = []
    for method in config.methods:
        types = get_method(method).config_type.default_types
        for name, _ in config.select.select(model, types):
            pairs.append((name, method))
    return pairs


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, in eval and inference mode."""
    from modelzip.train import classify

    return classify(model, x, y, batch)["accuracy"]


def compress_one(model: nn.Module, config: MethodConfig) -> nn.Module | None:
    """``model`` with ``config`` applied (a copy), or None when the method skipped the layer."""
    from modelzip.api import compress

    small, report = compress(model, [config], evaluate=False, measure=False)
    return small if report.layers else None


#: Evaluates candidates ``(layer, method, value)`` of a model on validation images, in order.
Runner = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, list[tuple[str, str, float]]], Iterable[float | None]
]

# A worker process receives the model and validation data once, through the pool's
# initializer, rather than with each of the many candidates.
_WORKER_STATE: dict[str, Any] = {}


def _init_worker(model: nn.Module, x: torch.Tensor, y: torch.Tensor, parent: int) -> None:
    from modelzip.lifeline import die_with_parent

    # Forked by the thread that submits (this function's caller, the main one in our commands).
    die_with_parent(parent)
    torch.set_num_threads(1)
    _WORKER_STATE.update(model=model, x=x, y=y)


def _evaluate(task: tuple[str, str, float]) -> float | None:
    s = _WORKER_STATE
    return evaluate_candidate(s["model"], s["x"], s["y"], *task)


def evaluate_candidate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layer: str,
    method: str,
    value: float,
) -> float | None:
    """Validation accuracy of ``model`` with only ``layer`` compressed at ``value`` (None when
    the method skips the layer)."""
    small = compress_one(model, layer_config(method, value, layer))
    return None if small is None else accuracy(small, x, y)


def run_sensitivity(
    model: nn.Module,
    data: Any,
    config: SensitivityConfig | None = None,
    *,
    model_name: str = "model",
    progress: bool = False,
    runner: Runner | None = None,
) -> SensitivityResult:
    """Accuracy against the knob for every selected layer and method (one layer at a time).

    Parameters
    ----------
    model:
        A trained classifier; never changed.
    data:
        An image :class:`~modelzip.data.Dataset`; its held-out validation split is used.
    config:
        Methods, knob values, validation size and workers.
    runner:
        Evaluates the candidates ``(layer, method, value)`` in order, given the model and the
        validation images; default: this process, or a pool of ``config.workers``.
        :class:`modelzip.sweep.sensitivity_task.StoreRunner` records them in a sweep store (a
        rerun resumes) and can run them on Ray.
    """
    from modelzip.progress import progress_bar

    config = config or SensitivityConfig()
    x, y = validation_split(data, config.validation_size)
    base_acc = accuracy(model, x, y)
    pairs = analysed_layers(model, config)
    tasks = [(layer, m, v) for layer, m in pairs for v in config.values(m)]
    results: dict[tuple[str, str, float], float | None] = {}
    with progress_bar("sensitivity", len(tasks), enabled=progress) as bar:
        if runner is None:
            results_in_order = _map(model, x, y, tasks, config.workers)
        else:
            results_in_order = runner(model, x, y, tasks)
        for task, result in zip(tasks, results_in_order, strict=True):
            results[task] = result
            bar.advance()
    curves = []
    for layer, method in pairs:
        values = config.values(method)
        accs = [results[(layer, method, v)] for v in values]
        if any(a is None for a in accs):
            continue  # the method does not apply to this layer (e.g. too small to decompose)
        curves.append(Curve(layer, method, knob_of(method).field, values, tuple(accs)))  # type: ignore[arg-type]
    return SensitivityResult(
        model=model_name,
        dataset=getattr(data, "name", "data"),
        baseline_accuracy=base_acc,
        curves=curves,
    )


def _map(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    tasks: list[tuple[str, str, float]],
    workers: int,
) -> Iterable[float | None]:
    if workers == 1:
        for task in tasks:
            yield evaluate_candidate(model, x, y, *task)
        return
    import multiprocessing
    import sys

    # fork, as torch's DataLoader does on Linux, saves each worker the seconds of importing torch;
    # a CUDA model needs spawn (CUDA cannot be used again in a forked child), as do other systems.
    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), x])
    method = "fork" if sys.platform == "linux" and on_cpu else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(model, x, y, os.getpid())
    ) as pool:
        yield from pool.map(_evaluate, tasks, chunksize=max(1, len(tasks) // (4 * workers)))


def plot_sensitivity(result: SensitivityResult, out_dir: str | Path) -> list[Path]:
    """One PNG per method (``sensitivity-METHOD.png``): a curve per layer, the baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modelzip.core.atomic import atomic_path

    out_dir = Path(out_dir)
    paths = []
    for method in dict.fromkeys(c.method for c in result.curves):
        curves = [c for c in result.curves if c.method == method]
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in curves:
            ax.plot(c.values, [100 * a for a in c.accuracy], marker="o", label=c.layer)
        ax.axhline(100 * result.baseline_accuracy, color="gray", linestyle="--", label="baseline")
        ax.set_xlabel(curves[0].knob)
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"{result.model} on {result.dataset}: {method}, one layer at a time")
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"sensitivity-{method}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
