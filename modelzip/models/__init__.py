"""The model zoo: small networks for the data sets of :mod:`modelzip.data`.

>>> from modelzip.models import create, list_models
>>> model = create("lenet300")          # records model._modelzip_source for pickle-free saving
>>> "lenet5" in list_models()
True

Image models take ``N x C x H x W`` floats in ``[0, 1]`` and normalise inside (their first layer),
so raw data can be fed as it is; layer names are stable, since recipes select layers by them.
"""

from __future__ import annotations

from modelzip.models import char_lstm as _char_lstm
from modelzip.models import compact_cnn as _compact_cnn
from modelzip.models import lenet as _lenet
from modelzip.models import resnet as _resnet
from modelzip.models import rnn_zoo as _rnn_zoo
from modelzip.models import twn_net as _twn_net  # noqa: F401 (registers twn_net)
from modelzip.models import vgg as _vgg
from modelzip.models.common import Normalize
from modelzip.models.registry import (
    ModelSpec,
    build_from_source,
    create,
    list_models,
    model_factory,
    model_info,
    model_source,
    register_model,
    resolve_model,
)

del _char_lstm, _compact_cnn, _lenet, _resnet, _rnn_zoo, _vgg  # imported for their registrations

__all__ = [
    "ModelSpec",
    "Normalize",
    "build_from_source",
    "create",
    "list_models",
    "model_factory",
    "model_info",
    "model_source",
    "register_model",
    "resolve_model",
]
