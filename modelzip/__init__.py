"""modelzip: make neural networks smaller and faster, and say honestly what it costs.

>>> import modelzip
>>> from modelzip.models import create
>>> model = create("lenet300")
>>> small, report = modelzip.compress(model, [modelzip.MagnitudePruneConfig(sparsity=0.9)])
>>> modelzip.save(small, "lenet300-pruned.mzip")

The method families live in subpackages (``modelzip.prune``, ``modelzip.quantize``,
``modelzip.decompose`` ...); :func:`list_methods` names every registered method.
"""

from modelzip.api import compress, model_stats
from modelzip.core.config import MethodConfig
from modelzip.core.errors import ConfigError, DataError, ModelError, ModelzipError
from modelzip.core.registry import get_method, list_methods, register_method
from modelzip.core.selection import Select
from modelzip.prune.magnitude import MagnitudePruneConfig
from modelzip.quantize.int8 import Int8Config
from modelzip.recipe import Recipe
from modelzip.report import LayerChange, ModelStats, Report
from modelzip.serialize import load, save

__version__ = "0.1.0"

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
