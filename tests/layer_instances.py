"""One real instance of every registered compressed-layer class, with the input it saw.

The golden files (``tests/golden/*.mzip``) hold, between them, every registered layer class
(``tests/test_golden.py`` fails otherwise), so loading them is the cheapest way to get a trained,
saved instance of each class without compressing anything: each model is run once on its stored
input with forward hooks on its compressed layers, and the first instance of each class is kept
with the input it received and the output it gave.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

import modelzip
from modelzip.core.module import _LAYERS, CompressedModule, layer_key
from modelzip.serialize import _top_compressed

GOLDEN = Path(__file__).resolve().parent / "golden"


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """One instance of a layer class inside a golden model, and one forward call's tensors."""

    key: str  # the registry key, ``module.QualName``
    path: Path  # the golden file it came from
    name: str  # its name in the model
    top_level: bool  # not inside another compressed layer (so the file holds its own tensors)
    model: nn.Module  # the whole golden model (eval mode)
    layer: CompressedModule
    inputs: tuple[Any, ...]
    output: Any

    @property
    def x(self) -> torch.Tensor:
        return self.inputs[0]


def import_all_layers() -> dict[str, type[CompressedModule]]:
    """Import every modelzip module so every layer class registers (as ``test_golden`` does)."""
    for info in pkgutil.walk_packages(modelzip.__path__, "modelzip."):
        if not info.name.endswith(("__main__", ".cli", "command")):
            importlib.import_module(info.name)
    return _LAYERS


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor a layer computes: RNNs return ``(output, state)``, the rest one tensor."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def _run_recorded(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[tuple, Any]]:
    """Each compressed module's first forward call (inputs, output) when ``model(x)`` runs."""
    seen: dict[str, tuple[tuple, Any]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, CompressedModule):

            def hook(mod: nn.Module, inp: tuple, out: Any, name: str = name) -> None:
                seen.setdefault(name, (inp, out))

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@functools.cache
def layer_cases() -> dict[str, LayerCase]:
    """Registry key → the first instance of that class in the golden files, preferring one that
    is not nested inside another compressed layer (its tensors are then its own in the file)."""
    import_all_layers()
    cases: dict[str, LayerCase] = {}
    for path in sorted(GOLDEN.glob("*.mzip")):
        model = modelzip.load(path).eval()
        x = load_file(str(path.with_suffix(".io.safetensors")))["x"]
        seen = _run_recorded(model, x)
        top = _top_compressed(model)
        for name, module in model.named_modules():
            if not isinstance(module, CompressedModule) or name not in seen:
                continue
            key = layer_key(type(module))
            old = cases.get(key)
            if old is not None and (old.top_level or name not in top):
                continue
            inputs, output = seen[name]
            cases[key] = LayerCase(key, path, name, name in top, model, module, inputs, output)
    return cases
