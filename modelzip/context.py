"""What a method handler may use besides the layer and its config."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass
class Context:
    """Shared state of one :func:`modelzip.compress` call.

    Attributes
    ----------
    data:
        The data set given to ``compress`` (a :class:`modelzip.data.Dataset` or ``TextCorpus``),
        or None. Data-driven methods (calibration, Taylor importance) refuse to run without it.
    sample:
        A small batch of model inputs on the model's device (calibration, output checks), or None.
    seed:
        Seed for methods that draw random numbers (stochastic rounding, random pruning).
    model:
        The whole model being compressed (read-only for layer handlers).
    """

    data: Any = None
    sample: torch.Tensor | None = None
    seed: int = 0
    model: torch.nn.Module | None = None
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def note(self, layer: str, text: str) -> None:
        """Record a remark about a layer (shown in the Report)."""
        self.notes[layer] = text

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded with :attr:`seed`."""
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g
