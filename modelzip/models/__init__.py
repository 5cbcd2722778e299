"""The model zoo: small networks for the data sets of :mod:`modelzip.data`.

>>> from modelzip.models import create, list_models
>>> model = create("lenet300")          # records model._modelzip_source for pickle-free saving
>>> "lenet5" in list_models()
True

Image models take ``N x C x H x W`` floats in ``[0, 1]`` and normalise inside (their first layer),
so raw data can be fed as it is; layer names are stable, since recipes select layers by them.

The zoo's modules (:data:`~modelzip.models.registry.ZOO_MODULES`) are imported on the first
look-up by name, not with this package: some are built from the compact family.
"""

from __future__ import annotations

from modelzip.models.common import Normalize
from modelzip.models.registry import (
    ModelSpec,
    build_from_source,
    build_hf,
    create,
    infer_source,
    list_models,
    model_factory,
    model_info,
    model_source,
    register_model,
    resolve_model,
)

__all__ = [
    "ModelSpec",
    "Normalize",
    "build_from_source",
    "build_hf",
    "create",
    "infer_source",
    "list_models",
    "model_factory",
    "model_info",
    "model_source",
    "register_model",
    "resolve_model",
]
