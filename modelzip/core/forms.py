"""The table of executable forms: what a compressed layer can be turned into to run fast.

A layer class lists the forms it offers in its ``executable_forms`` class attribute; each name
is registered with :func:`register_form`, as a function that, given the layer and the input it
sees (or None), returns the candidates ``(kind, build)`` to try (none when the form does not
apply to this instance, e.g. a grouped conv). :func:`modelzip.deploy` tries them
and keeps the fastest correct one; :func:`modelzip.load` builds a saved choice again with
:func:`build_form`. ``kind`` is ``"TOLERANCE:label"``: the tolerance class the result is checked
with (:data:`modelzip.deploy.TOLERANCE`) and what the report calls it.

The forms themselves are written in :mod:`modelzip.kernels` (:mod:`modelzip.kernels.forms` and
any other module there): a name not registered yet makes this table import that package's
modules once, by name as :func:`~modelzip.core.module.layer_class` imports layer modules, and
look again, so adding a form needs no edit here or to ``materialize``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable

import torch
from torch import nn

from modelzip.core.errors import ModelError

Candidate = tuple[str, Callable[[], nn.Module]]
Form = Callable[[nn.Module, torch.Tensor | None], list[Candidate]]

_FORMS: dict[str, Form] = {}
_KERNELS = "modelzip.kernels"
_scanned = False

#: Forms of plain torch layers (not modelzip's), which cannot declare their own.
TORCH_FORMS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("binary",),
    nn.Conv2d: ("binary",),
}


def register_form(name: str) -> Callable[[Form], Form]:
    """Register ``fn`` as the executable form called ``name``."""

    def decorator(fn: Form) -> Form:
        if name in _FORMS and _FORMS[name] is not fn:
            raise ModelError(f"executable form {name!r} is registered twice")
        _FORMS[name] = fn
        return fn

    return decorator


def import_kernels() -> None:
    """Import every module of :mod:`modelzip.kernels` once (they register forms and links)."""
    global _scanned
    if _scanned:
        return
    _scanned = True
    spec = importlib.util.find_spec(_KERNELS)
    paths = list(spec.submodule_search_locations or []) if spec else []
    for info in pkgutil.iter_modules(paths, _KERNELS + "."):
        importlib.import_module(info.name)


def _form(name: str) -> Form:
    if name not in _FORMS:
        import_kernels()
    if name not in _FORMS:
        raise ModelError(f"no executable form named {name!r} is registered")
    return _FORMS[name]


def declared_forms(module: nn.Module) -> tuple[str, ...]:
    """The form names ``module``'s class offers (its class attribute, or :data:`TORCH_FORMS`)."""
    if type(module) in TORCH_FORMS:
        return TORCH_FORMS[type(module)]
    return tuple(getattr(type(module), "executable_forms", ()))


def candidates(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """Every candidate of every form ``module`` offers, in the declared order."""
    out: list[Candidate] = []
    for name in declared_forms(module):
        out.extend(_form(name)(module, x))
    return out


def build_form(layer: nn.Module, kind: str) -> nn.Module:
    """The executable form ``kind`` of ``layer`` (eval mode, parameters frozen), built again
    without measuring: what :func:`modelzip.load` does for a layer saved deployed."""
    for candidate_kind, build in candidates(layer, None):
        if candidate_kind == kind:
            new = build().eval()
            for p in new.parameters():
                p.requires_grad_(False)
            return new
    raise ModelError(
        f"{type(layer).__name__} offers no executable form {kind!r} (written by another "
        "modelzip version?)"
    )
