"""Hugging Face transformers models built from a local config, with random weights.

``hf:path/to/config.json`` (on the command line, or :func:`resolve_model`) builds the model the
config describes: ``{"model_type": "gpt2", "n_layer": 4, ...}`` plus, optionally,
``"modelzip_class": "AutoModelForCausalLM"`` (default: the first of the config's
``architectures`` that an allow-listed auto class maps, else ``AutoModel``). Nothing is
downloaded and no code named by the file runs: the config's ``model_type`` must be one
transformers ships (``AutoConfig.for_model``), ``auto_map`` (remote code) is refused, and the
model class comes from the allow-list :data:`AUTO_CLASSES` of transformers' auto classes.

The model is wrapped in :class:`HFModel`, whose forward takes one tensor (token ids, or pixel
values for a vision model) and returns one tensor (the logits, or the last hidden state of a base
model), as every modelzip model does. Its build record ``{"kind": "hf", "class": ...,
"config": {...}}`` (recorded on the model by :func:`modelzip.models.build_hf` and
``resolve_model``) rebuilds it when a saved file is loaded, so saving needs no hand-written
factory.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.core.errors import ConfigError, ModelError
from modelzip.core.limits import check_bounds

#: The transformers auto classes a build record (or a config's ``modelzip_class``) may name.
AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForImageClassification",
)
PREFIX = "hf:"
#: Config keys that would make transformers run code from elsewhere, or that say nothing of the
#: architecture; refused or dropped.
_REFUSED_KEYS = ("auto_map",)
_DROPPED_KEYS = ("_name_or_path", "transformers_version", "architectures_source", "dtype")
#: A config JSON larger than this is refused unread.
MAX_CONFIG_BYTES = 1 << 20
INSTALL = "pip install transformers"


def available() -> bool:
    """Whether transformers is installed (looked up without importing it)."""
    return importlib.util.find_spec("transformers") is not None


def _transformers() -> Any:
    if not available():
        raise ModelError(f"Hugging Face models need transformers: {INSTALL}")
    if importlib.util.find_spec("torchvision") is not None:
        from modelzip.models.torchvision_compat import import_torchvision

        # transformers imports torchvision when it is installed (its image utilities, even for
        # BERT); a torchvision built for another torch fails there unless imported this way.
        import_torchvision()
    import transformers

    return transformers


class HFModel(nn.Module):
    """One transformers model behind modelzip's one-tensor-in, one-tensor-out forward.

    Attributes
    ----------
    model : transformers.PreTrainedModel
        The wrapped model (its layers are named ``model.<name>``).
    input_name : str
        The keyword the tensor is passed as (``input_ids`` or ``pixel_values``).
    """

    #: The build record ``{"kind": "hf", "class": ..., "config": {...}}``.
    source: dict[str, Any]

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.input_name = str(getattr(model, "main_input_name", "input_ids"))

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(**{self.input_name: x})
        first = out[0] if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple") else out
        return first


def _plain_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ModelError(f"{where}: a transformers config must be a JSON object")
    refused = [k for k in _REFUSED_KEYS if k in config]
    if refused:
        raise ModelError(
            f"{where}: config key {refused[0]!r} asks transformers to run code from elsewhere; "
            "refused (modelzip builds only the architectures transformers ships)"
        )
    if not isinstance(config.get("model_type"), str):
        raise ModelError(f"{where}: the config needs a 'model_type' (e.g. 'gpt2', 'bert')")
    plain = {k: v for k, v in config.items() if k not in _DROPPED_KEYS}
    try:
        check_bounds(plain, where)
    except ConfigError as e:
        raise ModelError(str(e)) from None
    return json.loads(json.dumps(plain))


def _class_for(config: dict[str, Any], requested: str | None, where: str) -> str:
    transformers = _transformers()
    if requested is not None:
        if requested not in AUTO_CLASSES:
            raise ModelError(
                f"{where}: model class {str(requested)[:80]!r} is not allowed; allowed: "
                f"{', '.join(AUTO_CLASSES)}"
            )
        return requested
    archs = config.get("architectures") or ()
    if archs:
        try:
            cfg_cls = type(transformers.AutoConfig.for_model(config["model_type"]))
        except (ValueError, KeyError):
            return "AutoModel"  # build_hf reports the unknown model type
        for auto in AUTO_CLASSES[1:]:
            try:
                cls = getattr(transformers, auto)._model_mapping[cfg_cls]
            except (KeyError, ValueError):
                continue
            if getattr(cls, "__name__", None) in archs:
                return auto
    return "AutoModel"


def build_hf_model(config: dict[str, Any], model_class: str | None = None) -> HFModel:
    """The model ``config`` describes, randomly initialised and wrapped; its build record is
    :attr:`HFModel.source` (:func:`modelzip.models.build_hf` records it on the model).

    Raises
    ------
    ModelError
        transformers is missing, the config names an unknown ``model_type``, asks for remote
        code, holds out-of-bounds numbers, or the class is not in :data:`AUTO_CLASSES`.
    """
    where = "Hugging Face config"
    transformers = _transformers()
    plain = _plain_config(config, where)
    requested = plain.pop("modelzip_class", model_class)
    auto = _class_for(plain, requested, where)
    kwargs = {k: v for k, v in plain.items() if k != "model_type"}
    try:
        cfg = transformers.AutoConfig.for_model(plain["model_type"], **kwargs)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{where}: {str(e).splitlines()[0][:200]}") from None
    cfg.use_cache = False  # one tensor out; no key/value cache objects
    try:
        inner = getattr(transformers, auto).from_config(cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{where}: {auto} cannot build {plain['model_type']!r}: {e}") from None
    model = HFModel(inner)
    model.source = {"kind": "hf", "class": auto, "config": plain}
    return model


def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON object of a local config file (bounded size)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelError(f"no such Hugging Face config file: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelError(f"{path}: a config larger than {MAX_CONFIG_BYTES:,} bytes is refused")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not a JSON config: {e}") from None


def from_reference(spec: str, model_class: str | None = None) -> HFModel:
    """``hf:path/to/config.json`` (or a directory holding ``config.json``) built untrained."""
    return build_hf_model(read_config(spec[len(PREFIX) :]), model_class)


def build_from_record(source: dict[str, Any]) -> HFModel:
    """Rebuild from a ``{"kind": "hf"}`` build record (read from a file: untrusted)."""
    config, auto = source.get("config"), source.get("class")
    if not isinstance(config, dict) or not isinstance(auto, str):
        raise ModelError("a Hugging Face build record needs a 'config' object and a 'class'")
    return build_hf_model(config, auto)


def input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """A default input shape for a wrapped model: 32 token ids, or its image size."""
    if not isinstance(model, HFModel):
        return None
    cfg = model.config
    if model.input_name == "pixel_values":
        size = getattr(cfg, "image_size", None)
        channels = getattr(cfg, "num_channels", 3)
        return (int(channels), int(size), int(size)) if isinstance(size, int) else None
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return (min(32, int(limit)) if isinstance(limit, int) else 32,)
