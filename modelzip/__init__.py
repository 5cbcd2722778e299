"""modelzip: make neural networks smaller and faster, and say honestly what it costs.

>>> import modelzip
>>> from modelzip.models import create
>>> model = create("lenet300")
>>> small, report = modelzip.compress(model, [modelzip.MagnitudePruneConfig(sparsity=0.9)])
>>> modelzip.save(small, "lenet300-pruned.mzip")

The method families live in subpackages (``modelzip.prune``, ``modelzip.quantize``,
``modelzip.decompose`` ...); :func:`list_methods` names every registered method.

``import modelzip`` imports only the core (configs, errors, the method registry) and the recipe
and report records: the names below that need a family, the zoo or the file format
(``compress``, ``save``, ``Int8Config`` ...) are imported on first use (PEP 562), and so are the
subpackages reached as attributes (``modelzip.models.create``). A script that only reads a
recipe or lists methods does not pay for the compact family, the training loop or the zoo.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

# The `modelzip` command times kernels side by side; OpenMP threads that spin after a parallel
# region (the default) steal the cores from the next kernel, and on a small machine a dense
# product measured after a Numba one ran 10-200x slower. OpenMP reads this when torch loads it,
# so it is set here, before torch, and only for the command (a library user's process is theirs).
if os.path.basename(sys.argv[0] if sys.argv else "") == "modelzip":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from modelzip.core.config import MethodConfig
from modelzip.core.errors import ConfigError, DataError, ModelError, ModelzipError
from modelzip.core.registry import get_method, list_methods, register_method
from modelzip.core.selection import Select
from modelzip.recipe import Recipe
from modelzip.report import LayerChange, ModelStats, Report

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from modelzip.api import compress, model_stats
    from modelzip.prune import MagnitudePruneConfig
    from modelzip.quantize import Int8Config
    from modelzip.serialize import load, save

__version__ = "0.1.0"

# Public name -> the module it is imported from when it is first asked for (a family's package,
# which registers the family's methods).
_LAZY = {
    "compress": "modelzip.api",
    "model_stats": "modelzip.api",
    "load": "modelzip.serialize",
    "save": "modelzip.serialize",
    "MagnitudePruneConfig": "modelzip.prune",
    "Int8Config": "modelzip.quantize",
}

__all__ = [
    "ConfigError",
    "DataError",
    "Int8Config",
    "LayerChange",
    "MagnitudePruneConfig",
    "MethodConfig",
    "ModelError",
    "ModelStats",
    "ModelzipError",
    "Recipe",
    "Report",
    "Select",
    "compress",
    "get_method",
    "list_methods",
    "load",
    "model_stats",
    "register_method",
    "save",
]


def __getattr__(name: str) -> Any:
    """A lazy public name (:data:`_LAZY`), or a subpackage reached as an attribute."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups no longer come here
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # ``import modelzip; modelzip.models.create(...)`` worked when everything was imported
        # eagerly; importing the subpackage binds it as an attribute of this package.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
