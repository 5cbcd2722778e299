"""How a converted layer is written, as export results report it."""

from __future__ import annotations

from torch import nn

#: Set on the module a converter returns: how the layer is written (read by export results).
EXPORT_FORM = "_modelzip_export_form"


def mark(module: nn.Module, form: str) -> nn.Module:
    """``module``, recording that its layer is written as ``form``."""
    module.__dict__[EXPORT_FORM] = form
    return module


def form_of(module: nn.Module, default: str) -> str:
    """What :func:`mark` recorded on ``module``, else ``default``."""
    return str(module.__dict__.get(EXPORT_FORM, default))
