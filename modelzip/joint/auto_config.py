"""The settings of automatic compression (:func:`modelzip.joint.auto.auto_compress`): search,
tolerated drop, evaluations, fine-tune, latency margin, families."""

from __future__ import annotations

import dataclasses
from typing import Literal

from modelzip.core.errors import ConfigError
from modelzip.core.frozen import ConfigBase, check_range
from modelzip.joint.auto_families import FAMILIES
from modelzip.joint.sensitivity import SensitivityConfig


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
