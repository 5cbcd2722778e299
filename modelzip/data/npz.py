"""User data sets from ``.npz`` files.

The file holds ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optionally ``classes``, one
string per class). Images are ``N x H x W`` (one channel) or ``N x C x H x W``; uint8 images are
scaled from ``0..255`` to ``[0, 1]``, float images are kept as they are. Labels are 1-D integers.
Every check names the array and what is wrong with it, because a malformed file otherwise fails
deep inside training with a shape error. The file is untrusted: object arrays (pickle) are
refused, and each member's declared shape and dtype are read from its ``.npy`` header and
bounded (:data:`MAX_ARRAY_BYTES`, :data:`MAX_MEMBERS`) before anything is decompressed, so a
small "zip bomb" cannot exhaust memory.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from modelzip.data.dataset import Dataset
from modelzip.errors import DataError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
#: Largest array a data set may hold once decoded (MNIST's training images are 47 MB).
MAX_ARRAY_BYTES = 4 << 30
#: A label beyond this would make a classifier head of absurd size.
MAX_CLASSES = 1 << 16
#: More members than this is no data set of ours.
MAX_MEMBERS = 64


def _check_members(path: Path) -> None:
    """Read each member's ``.npy`` header (shape, dtype) and refuse what is too large."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise DataError(f"{path} has {len(infos)} arrays; a data set has at most {MAX_MEMBERS}")
        for info in infos:
            key = info.filename.removesuffix(".npy")
            if key not in (*REQUIRED, "classes"):
                continue
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                raise DataError(f"{path}: array {key!r} holds Python objects; refused (pickle)")
            nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if nbytes > MAX_ARRAY_BYTES:
                raise DataError(
                    f"{path}: array {key!r} declares shape {shape} of {dtype} "
                    f"({nbytes:,} bytes), over the {MAX_ARRAY_BYTES:,}-byte limit"
                )


def _images(path: Path, key: str, a: np.ndarray) -> torch.Tensor:
    if a.ndim not in (3, 4):
        raise DataError(
            f"{path}: array {key!r} has ndim {a.ndim} (shape {a.shape}); expected N x H x W "
            "or N x C x H x W"
        )
    if a.shape[0] == 0:
        raise DataError(f"{path}: array {key!r} is empty")
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{path}: array {key!r} contains NaN or Inf")
    else:
        raise DataError(f"{path}: array {key!r} has dtype {a.dtype}; expected uint8 or float")
    if x.ndim == 3:
        x = x[:, None]
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(path: Path, key: str, a: np.ndarray, n: int) -> torch.Tensor:
    if a.ndim != 1:
        raise DataError(f"{path}: array {key!r} has shape {a.shape}; expected 1-D labels")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise DataError(f"{path}: array {key!r} has dtype {a.dtype}; labels must be integers")
    if len(a) != n:
        raise DataError(f"{path}: array {key!r} has {len(a)} labels but there are {n} images")
    if len(a) and a.min() < 0:
        raise DataError(f"{path}: array {key!r} has a negative label ({a.min()})")
    if len(a) and a.max() >= MAX_CLASSES:
        raise DataError(
            f"{path}: array {key!r} has label {a.max()}; at most {MAX_CLASSES:,} classes"
        )
    return torch.from_numpy(a.astype(np.int64))


def load_npz(path: str | Path) -> Dataset:
    """Load an image classification data set from an ``.npz`` file (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The file; its stem becomes the data set's name.

    Raises
    ------
    DataError
        The file is missing, not an npz archive, or an array is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    try:
        if zipfile.is_zipfile(path):
            _check_members(path)
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path} holds a single array, not an .npz archive of {list(REQUIRED)}")
        with z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise DataError(
                    f"{path}: array {missing[0]!r} is missing; the file must hold {list(REQUIRED)} "
                    f"(it has {z.files})"
                )
            arrays = {k: z[k] for k in (*REQUIRED, "classes") if k in z.files}
    except DataError:
        raise
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
    ) as e:
        raise DataError(f"{path} is not a readable .npz archive: {str(e)[:200]}") from None
    except (NotImplementedError, RuntimeError, KeyError, TypeError) as e:
        # zipfile raises these for unsupported compression, encryption or corrupt directories.
        raise DataError(
            f"{path} is not a readable .npz archive ({type(e).__name__}: {e})"
        ) from None

    x_train = _images(path, "x_train", arrays["x_train"])
    x_test = _images(path, "x_test", arrays["x_test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{path}: array 'x_test' has images of shape {tuple(x_test.shape[1:])} but 'x_train' "
            f"has {tuple(x_train.shape[1:])}"
        )
    y_train = _labels(path, "y_train", arrays["y_train"], len(x_train))
    y_test = _labels(path, "y_test", arrays["y_test"], len(x_test))
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"].reshape(-1))
        if len(classes) < num_classes:
            raise DataError(
                f"{path}: array 'classes' names {len(classes)} classes but the labels go up to "
                f"{num_classes - 1}"
            )
        num_classes = len(classes)
    else:
        classes = tuple(str(i) for i in range(num_classes))
    return Dataset(
        name=path.stem,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        classes=classes,
    )
