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


def aliases(model: torch.nn.Module, module: torch.nn.Module) -> list[str]:
    """Every name under which ``module`` appears in ``model`` (a shared layer has several)."""
    return [n for n, m in model.named_modules(remove_duplicate=False) if m is module]


def replace_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> list[str]:
    """Put ``new`` in place of the module at ``name`` under every name that module has.

    A layer used twice (``nn.Sequential(fc, act, fc)``) is one object under two names; replacing
    only the name a handler selected would leave the other calling the old layer, so the model
    would compute something its Report does not describe. Every alias gets the same ``new``
    object, so a shared layer stays shared. Returns the names replaced (``name`` first).
    """
    old = model.get_submodule(name)
    names = [name] + [n for n in aliases(model, old) if n != name]
    for n in names:
        model.set_submodule(n, new)
    return names
