"""Whole-model rewrites that link a deployed model's layers, registered by the family that owns
them (quantize's int8 chain: static int8 layers passing uint8 on), so that deploy and serialize,
which sit below the families, can apply and undo them without importing a family.

A link's ``apply(model)`` returns ``(model to run, number of links, why none)``; ``undo(model)``
returns the unlinked model (the model itself when it has no links).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from modelzip.core.errors import ModelError

Apply = Callable[[nn.Module], tuple[nn.Module, int, str]]
Undo = Callable[[nn.Module], nn.Module]

_LINKS: dict[str, tuple[Apply, Undo]] = {}


def register_link(name: str, apply: Apply, undo: Undo) -> None:
    """Register the model link ``name`` (at import of the module that implements it)."""
    if name in _LINKS and _LINKS[name] != (apply, undo):
        raise ModelError(f"model link {name!r} is registered twice")
    _LINKS[name] = (apply, undo)


def model_link(name: str) -> tuple[Apply, Undo]:
    """``(apply, undo)`` of the link ``name``; the built-in families are imported first."""
    if name not in _LINKS:
        from modelzip.core.registry import list_methods

        list_methods()  # imports the built-in families, which register their links
    try:
        return _LINKS[name]
    except KeyError:
        raise ModelError(f"no model link {name!r} (known: {sorted(_LINKS)})") from None


def unlink(model: nn.Module) -> nn.Module:
    """``model`` with every registered link undone."""
    for _, undo in _LINKS.values():
        model = undo(model)
    return model
