"""Trained zoo models, cached: train once with the default config, load from the cache after.

>>> from modelzip.baselines import pretrained, pretrained_info
>>> model = pretrained("lenet300")              # trains about a minute the first time
>>> pretrained_info("lenet300")["test_error_percent"]

The cache file is ``cache_dir()/baselines/<model>-<dataset>-<hash>.safetensors`` (plus ``.json``
with the test metrics and training time); the hash covers the train config, the model's build
record and the data, so changing any of them trains a new baseline instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.api import check_data_fits
from modelzip.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from modelzip.core.atomic import cache_dir
from modelzip.core.errors import ModelError
from modelzip.data import Dataset, TextCorpus, list_datasets, load_dataset
from modelzip.models import create, model_info
from modelzip.train import TrainConfig, default_train_config, evaluate, train

__all__ = ["PUBLISHED", "baseline_path", "pretrained", "pretrained_info"]

#: Bump when training code changes in a way that should invalidate cached baselines.
CACHE_VERSION = 1

#: Published test errors (percent) and the targets the default configs must meet on MNIST.
PUBLISHED: dict[str, dict[str, Any]] = {
    "lenet300": {
        "test_error": 1.64,
        "target_error": 1.75,
        "reference": "Han et al., Learning both Weights and Connections (NeurIPS 2015)",
    },
    "lenet5": {
        "test_error": 0.80,
        "target_error": 0.85,
        "reference": "Han et al., Learning both Weights and Connections (NeurIPS 2015)",
    },
    "vgg_small": {"test_error": None, "target_error": 0.70, "reference": "ours"},
    "resnet_small": {"test_error": None, "target_error": 0.70, "reference": "ours"},
    "char_lstm": {"test_perplexity": None, "target_perplexity": 6.0, "reference": "ours"},
}


def fit_kwargs(model_name: str, data: Dataset | TextCorpus) -> dict[str, Any]:
    """Model arguments that adapt a zoo model to ``data`` (only those that differ from defaults)."""
    defaults = model_info(model_name).defaults
    wanted: dict[str, Any] = {}
    if isinstance(data, Dataset):
        wanted = {"input_shape": list(data.input_shape), "num_classes": data.num_classes}
    elif isinstance(data, TextCorpus):
        wanted = {"vocab_size": data.vocab_size}
    # Compared as JSON data, where the default (1, 28, 28) and [1, 28, 28] are the same.
    return {
        k: v
        for k, v in wanted.items()
        if k in defaults and v != json.loads(json.dumps(defaults[k]))
    }


def _data_key(dataset: str) -> str:
    if dataset in list_datasets():
        return dataset
    path = Path(dataset)
    if path.is_file():
        # A user file is keyed by its content, so that editing it trains a new baseline.
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return dataset


def _resolve(
    model_name: str, dataset: str | None, config: TrainConfig | None
) -> tuple[str, TrainConfig, dict[str, Any], Dataset | TextCorpus, Path]:
    dataset = dataset or model_info(model_name).dataset
    config = config or default_train_config(model_name)
    data = load_dataset(dataset)
    kwargs = fit_kwargs(model_name, data)
    source = {"kind": "zoo", "name": model_name, "kwargs": kwargs}
    key = json.dumps([CACHE_VERSION, config.to_dict(), source, _data_key(dataset)], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    stem = Path(dataset).stem if dataset.endswith(".npz") else dataset
    return (
        dataset,
        config,
        kwargs,
        data,
        cache_dir() / "baselines" / f"{model_name}-{stem}-{digest}.safetensors",
    )


def baseline_path(
    model_name: str, dataset: str | None = None, config: TrainConfig | None = None
) -> Path:
    """Where :func:`pretrained` caches ``model_name`` trained on ``dataset`` with ``config``."""
    return _resolve(model_name, dataset, config)[-1]


def pretrained(
    model_name: str,
    dataset: str | None = None,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> nn.Module:
    """A zoo model trained on ``dataset``: from the cache, or trained now and cached.

    Parameters
    ----------
    model_name : str
        A zoo model (see :func:`modelzip.models.list_models`).
    dataset : str, optional
        A data set name or ``.npz`` path; default the model's own (``mnist``, ``shakespeare``).
        Image models are adapted to its input shape and number of classes.
    config : TrainConfig, optional
        Default :func:`modelzip.train.default_train_config` of the model.
    progress : bool
        Show training progress.

    Returns
    -------
    nn.Module
        The trained model, on the CPU, in eval mode, with its build record set.

    Raises
    ------
    DataError
        The model cannot take the data set (images for a language model, say), found before
        training (:func:`modelzip.api.check_data_fits`).
    """
    dataset, config, kwargs, data, path = _resolve(model_name, dataset, config)
    if path.is_file():
        try:
            return load_checkpoint(path)[0]
        except ModelError:
            pass  # an unreadable cache entry is trained again and replaced
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the initial weights
        model = create(model_name, **kwargs)
    check_data_fits(model, data)  # e.g. images for a language model: refused before training
    result = train(model, data, config, progress=progress)
    metrics = evaluate(model, data, "test")
    info: dict[str, Any] = {
        "model": model_name,
        "dataset": dataset,
        "train_config": config.to_dict(),
        "test": metrics,
        "seconds": result.seconds,
        "threads": torch.get_num_threads(),
        "history": result.to_dict()["history"],
    }
    if "perplexity" not in metrics:
        info["test_error_percent"] = 100.0 * (1.0 - metrics["accuracy"])
    save_checkpoint(model, path, info)
    return model.eval()


def pretrained_info(
    model_name: str,
    dataset: str | None = None,
    config: TrainConfig | None = None,
    train_if_missing: bool = True,
) -> dict[str, Any] | None:
    """The metadata of a cached baseline: test metrics, training seconds, config, history.

    Trains the baseline first if it is not cached, unless ``train_if_missing`` is False, in which
    case None is returned.
    """
    path = baseline_path(model_name, dataset, config)
    if not path.is_file():
        if not train_if_missing:
            return None
        pretrained(model_name, dataset, config, progress=False)
    return read_checkpoint_metadata(path)
