"""Where a command's model and data come from: a saved file, a zoo name, or a factory reference.

Every command that takes a model (``modelzip eval``, ``compress``, ``deep``, ``auto``,
``export``, the sweep's workers ...) reads the same argument the same way, so the rules live here
once, as public functions, and no family or tool reaches into the command line's internals:

- a path ending in ``.mzip``/``.safetensors`` (or an existing file) is loaded with
  :func:`modelzip.serialize.load`;
- a zoo name (:func:`modelzip.models.list_models`) is its trained baseline on the data set
  (trained once, then cached), unless weights are given or ``pretrained=False``;
- anything else is :func:`modelzip.models.resolve_model`: a zoo name built untrained, or
  ``package.module:factory``.

Code named by a file or a reference runs only as :mod:`modelzip.models.registry` allows: a
registered factory, or anything with ``trust_remote_code`` (``--trust-remote-code``), which the
caller gives, never a file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.core.errors import ModelzipError
from modelzip.core.running import model_device

MODEL_HELP = (
    "a zoo name (modelzip list), package.module:factory, hf:path/to/config.json (a Hugging Face "
    "model built from a local config), or a saved .mzip file"
)


def zoo_kwargs(spec: str, data: Any) -> dict[str, Any]:
    """Arguments that fit a zoo model to a data set (input shape, classes, vocabulary)."""
    from modelzip.baselines import fit_kwargs
    from modelzip.models import list_models

    return fit_kwargs(spec, data) if data is not None and spec in list_models() else {}


def load_model(
    spec: str,
    weights: str | None = None,
    dataset: str | None = None,
    pretrained: bool = True,
    progress: bool = True,
    data: Any = None,
    *,
    trust_remote_code: bool | None = None,
) -> nn.Module:
    """A model from a saved file, a zoo name or ``package.module:factory`` (see the module doc).

    A zoo model without ``weights`` is its trained baseline on ``dataset`` (default: the
    model's own), trained once, then cached. Given ``data``, a data set the model cannot take
    (other input shape, labels beyond its classes, images for a language model) is refused here,
    before any work. ``trust_remote_code`` (True or False) decides for this call alone; None
    keeps what the caller's scope says (:func:`modelzip.models.registry.trusting_remote_code`).
    """
    from modelzip.models import list_models, resolve_model
    from modelzip.models.registry import trusting_remote_code
    from modelzip.serialize import load

    scope = (
        contextlib.nullcontext()
        if trust_remote_code is None
        else trusting_remote_code(trust_remote_code)
    )
    with scope:
        path = Path(spec)
        if path.suffix in (".mzip", ".safetensors") or (path.is_file() and ":" not in spec):
            if not path.is_file():
                raise ModelzipError(f"no such file: {path}")
            model = load(path)
        elif weights is None and pretrained and spec in list_models():
            from modelzip.baselines import pretrained as baseline

            model = baseline(spec, dataset or default_dataset(spec), progress=progress)
        else:
            model = resolve_model(spec, **zoo_kwargs(spec, data))
        if weights is not None:
            load_weights(model, weights)
    if data is not None:
        from modelzip.api import check_data_fits

        check_data_fits(model, data)
    return model


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load ``weights`` into ``model``: a modelzip file's state, or a user's weights file
    (:func:`modelzip.checkpoint.load_user_weights`: ``.safetensors``, ``.pt``)."""
    from modelzip.checkpoint import load_user_weights
    from modelzip.serialize import load, read_metadata

    path = Path(weights)
    if path.suffix == ".mzip" or (path.suffix == ".safetensors" and is_modelzip_file(path)):
        read_metadata(path)
        model.load_state_dict(load(path).state_dict())
    else:
        load_user_weights(model, path)


def is_modelzip_file(path: Path) -> bool:
    """Whether ``path`` holds modelzip's metadata (a plain ``.safetensors`` file does not)."""
    from modelzip.serialize import read_metadata

    try:
        read_metadata(path)
        return True
    except ModelzipError:
        return False


def default_dataset(model: str) -> str:
    """The data set the zoo model ``model`` is meant for."""
    from modelzip.models import model_info

    return model_info(model).dataset


def dataset_for(
    name: str | None, model_spec: str | None = None, image_size: int | None = None
) -> Any:
    """The data set ``name`` (a registered name, an ``.npz`` file or a folder of class
    subfolders, cropped to ``image_size``), or, without a name, the zoo model's own; models
    outside the zoo need the name."""
    from modelzip.data import load_dataset

    if name is not None:
        return load_dataset(name, image_size=image_size)
    if image_size is not None:
        raise ModelzipError("--image-size applies to a --dataset folder of images")
    if name is None:
        if model_spec is None:
            raise ModelzipError("--dataset is required")
        from modelzip.models import list_models

        zoo_name = _zoo_name_of_file(model_spec) or model_spec
        if zoo_name not in list_models():
            raise ModelzipError("--dataset is required for models outside the zoo")
        name = default_dataset(zoo_name)
    return load_dataset(name)


def _zoo_name_of_file(model_spec: str) -> str | None:
    """The zoo model a ``.mzip`` file was built from (its source record), if any."""
    if not model_spec.endswith(".mzip") or not Path(model_spec).is_file():
        return None
    from modelzip.serialize import read_metadata

    try:
        source = read_metadata(Path(model_spec)).get("source") or {}
    except ModelzipError:
        return None  # loading it says what is wrong with it
    name = source.get("name") if source.get("kind") == "zoo" else None
    return name if isinstance(name, str) else None


def sample_batch(model: nn.Module, input_shape: str | None, batch: int) -> torch.Tensor:
    """A batch of ``batch`` inputs of ``input_shape`` (``"1,28,28"``), or of the shape the model
    was built for (zoo models know it): what ``inspect``, ``estimate`` and ``export`` run."""
    from modelzip.models.shapes import sample_input

    shape = None
    if input_shape:
        try:
            shape = tuple(int(s) for s in input_shape.split(","))
        except ValueError:
            shape = ()
        if not shape or any(s < 1 for s in shape):
            raise ModelzipError(
                f"--input-shape must be positive ints separated by commas, e.g. 1,28,28; "
                f"got {input_shape!r}"
            )
    if batch < 1:
        raise ModelzipError(f"--batch must be a positive int, got {batch}")
    sample = sample_input(model, batch, shape)
    source = getattr(model, "_modelzip_source", None) or {}
    ref = str(source.get("ref", ""))
    if sample is None and ref.startswith("torchvision.models") and ".video" not in ref:
        # torchvision's classification models: ImageNet's 224 x 224 RGB images
        sample = torch.randn(batch, 3, 224, 224, device=model_device(model))
    if sample is None:
        raise ModelzipError("--input-shape C,H,W is required for models outside the zoo")
    return sample
