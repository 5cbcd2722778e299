"""What a search optimises: accuracy after a short training, under size, latency or energy targets.

The reward follows MnasNet (Tan et al., CVPR 2019):

.. math:: \\mathrm{score} = \\mathrm{acc} \\cdot \\prod_m (m / T_m)^{w_m},
          \\quad w_m = -\\mathrm{penalty} \\text{ if } m > T_m \\text{ else } 0

over the targets given (``params``, measured CPU ``latency_ms``, hardware-model ``energy`` or
``cycles`` from :func:`modelzip.hardware.estimate`). Architectures above ``max_params`` are
rejected without training (score 0). Training is seeded from the architecture, so evaluating the
same architecture twice gives the same numbers, which is what makes a resumed search identical.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import torch
from torch import nn

from modelzip.core.counting import collect_workloads, count_params
from modelzip.core.errors import ConfigError
from modelzip.core.frozen import ConfigBase, check_range
from modelzip.data.dataset import Dataset
from modelzip.train import TrainConfig, evaluate, train

__all__ = ["SearchObjective", "model_costs"]


@dataclasses.dataclass(frozen=True)
class SearchObjective(ConfigBase):
    """Proxy training and the reward's targets (see the module docstring).

    ``train_size`` training images (of the training split) for ``epochs``; accuracy is measured
    on ``val_size`` held-out training images, never on the test set. A target left None is not
    part of the reward.
    """

    max_params: int = 50_000
    train_size: int = 10_000
    val_size: int = 5_000
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 0
    params_target: int | None = None
    latency_target_ms: float | None = None
    energy_target: float | None = None
    cycles_target: float | None = None
    penalty: float = 0.07
    #: The hardware model's accelerator for ``energy`` and ``cycles`` (None: not estimated).
    accelerator: str | None = "eyeriss"
    #: Where the proxy training runs (``"cpu"``, ``"cuda"``); costs are always taken on the CPU.
    device: str = "cpu"

    def validate(self) -> None:
        check_range(self, "max_params", 1)
        check_range(self, "train_size", 1)
        check_range(self, "val_size", 1)
        check_range(self, "epochs", 1)
        check_range(self, "batch_size", 1)
        check_range(self, "lr", 0.0, low_open=True)
        check_range(self, "params_target", 1)
        check_range(self, "latency_target_ms", 0.0, low_open=True)
        check_range(self, "energy_target", 0.0, low_open=True)
        check_range(self, "cycles_target", 0.0, low_open=True)
        check_range(self, "penalty", 0.0)
        if self.accelerator is None and (self.energy_target or self.cycles_target):
            raise ConfigError(
                "SearchObjective: energy_target and cycles_target need an accelerator, got None"
            )

    def reward(self, accuracy: float, metrics: dict[str, float]) -> float:
        """``accuracy`` times the MnasNet penalty of every target that is exceeded."""
        score = accuracy
        for key, target in (
            ("params", self.params_target),
            ("latency_ms", self.latency_target_ms),
            ("energy", self.energy_target),
            ("cycles", self.cycles_target),
        ):
            if target is not None and metrics[key] > target:
                score *= (metrics[key] / target) ** (-self.penalty)
        return score

    def __call__(self, model: nn.Module, data: Dataset, key: str = "") -> dict[str, Any]:
        """Train ``model`` briefly and return ``{"score", "accuracy", "params", ...}``."""
        metrics: dict[str, Any] = model_costs(
            model,
            data.input_shape,
            latency=self.latency_target_ms is not None,
            hardware=self.accelerator,
        )
        if metrics["params"] > self.max_params:
            return {**metrics, "accuracy": 0.0, "score": 0.0, "rejected": "max_params"}
        (x, y), (xv, yv) = data.split(self.val_size, seed=0)
        seed = (self.seed + zlib.crc32(key.encode())) % 2**31
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=gen)[: self.train_size].sort().values
        sub = dataclasses.replace(data, x_train=x[idx], y_train=y[idx])
        config = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            schedule="onecycle",
            seed=seed,
            val_size=0,
        )
        torch.manual_seed(seed)
        for m in model.modules():  # re-initialise from the seed: same arch, same numbers
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
        model.to(self.device)
        train(model, sub, config, progress=False, val=(xv[:1], yv[:1]))
        accuracy = evaluate(model, data, (xv, yv))["accuracy"]
        return {**metrics, "accuracy": accuracy, "score": self.reward(accuracy, metrics)}


def model_costs(
    model: nn.Module,
    input_shape: tuple[int, ...],
    latency: bool = True,
    hardware: str | None = "eyeriss",
) -> dict[str, Any]:
    """Parameters, MACs (one image), and optionally measured latency (batch 1, ms) and the
    hardware model's ``energy`` and ``cycles`` on ``hardware``."""
    sample = torch.rand(1, *input_shape)
    workloads = collect_workloads(model, sample)
    out: dict[str, Any] = {
        "params": count_params(model),
        "macs": sum(w.macs for w in workloads),
    }
    if latency:
        from modelzip.measure import measure_latency

        out["latency_ms"] = measure_latency(model, sample, repeats=10, min_seconds=0.05)
    if hardware is not None:
        from modelzip.hardware import estimate

        est = estimate(workloads, hardware)
        out["energy"] = est.total_energy
        out["cycles"] = est.cycles
        out["energy_unit"] = est.energy_unit
    return out
