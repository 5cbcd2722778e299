"""User data sets from ``.npz`` files.

The file holds ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optionally ``classes``, one
string per class). Images are ``N x H x W`` (one channel) or ``N x C x H x W``; uint8 images are
scaled from ``0..255`` to ``[0, 1]``, float images are kept as they are. Labels are 1-D integers.
Every check names the array and what is wrong with it, because a malformed file otherwise fails
deep inside training with a shape error. The file is untrusted: object arrays (pickle) are
refused, and each member's declared shape and dtype are read from its ``.npy`` header and
bounded (:data:`MAX_ARRAY_BYTES`, :data:`MAX_MEMBERS`, :data:`MAX_CLASSES` names in
``classes``) before anything is decompressed, so a small "zip bomb" cannot exhaust memory; a
header that does not parse is a :class:`DataError` naming the array.

The number of classes (the largest label + 1, or the length of ``classes``) is bounded by
:data:`MAX_CLASSES`, because a model fitted to the data gets a classifier head of that width: a
46 kB file naming 30 million classes would otherwise build a head of billions of weights. Raise
the bound with ``load_npz(path, max_classes=...)``, or for a whole block (the command line's
``--max-classes``) with :func:`class_limit`.
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from modelzip.core.errors import DataError
from modelzip.core.limits import MAX_CLASSES, class_limit, current_class_limit, positive_limit
from modelzip.data.dataset import Dataset

__all__ = ["MAX_CLASSES", "class_limit", "current_class_limit", "load_npz"]

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
#: Largest array a data set may hold once decoded (MNIST's training images are 47 MB).
MAX_ARRAY_BYTES = 4 << 30
#: More members than this is no data set of ours.
MAX_MEMBERS = 64

# What numpy's .npy header parser raises on a malformed header (it evaluates a Python literal;
# a header written "for Python 2" goes through the tokenizer first).
_HEADER_ERRORS = (
    ValueError,
    SyntaxError,
    tokenize.TokenError,
    TypeError,
    KeyError,
    OverflowError,
    RecursionError,
    MemoryError,
)


def _shape_text(shape: tuple) -> str:
    text = str(tuple(shape))
    return text if len(text) <= 80 else f"{text[:60]}... ({len(shape)} dimensions)"


def _bytes_text(nbytes: int) -> str:
    return f"{nbytes:,} bytes" if nbytes < 10**18 else f"about 10^{len(str(nbytes)) - 1} bytes"


def _read_header(path: Path, key: str, f) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a member's ``.npy`` header; a header that does not parse is a
    DataError (zlib and zip errors while reading pass through to :func:`load_npz`)."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except _HEADER_ERRORS as e:
        message = str(e).splitlines()[0][:120] if str(e) else ""
        raise DataError(
            f"{path}: array {key!r} has an unreadable .npy header ({type(e).__name__}: {message})"
        ) from None
    if any(d < 0 for d in shape):
        raise DataError(
            f"{path}: array {key!r} declares a negative dimension: {_shape_text(shape)}"
        )
    return shape, dtype


def _is_zip(path: Path) -> bool:
    """A zip archive from its first byte on: np.load decides by the first bytes, so a ``.npy``
    with a zip directory appended must not pass as one."""
    with path.open("rb") as f:
        head = f.read(4)
    return head in (b"PK\x03\x04", b"PK\x05\x06") and zipfile.is_zipfile(path)


def _check_members(path: Path, max_classes: int) -> None:
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
                shape, dtype = _read_header(path, key, f)
            if dtype.hasobject:
                raise DataError(f"{path}: array {key!r} holds Python objects; refused (pickle)")
            count = math.prod(shape)  # Python ints: a declared 10^400 neither overflows nor wraps
            nbytes = count * dtype.itemsize
            if nbytes > MAX_ARRAY_BYTES:
                raise DataError(
                    f"{path}: array {key!r} declares shape {_shape_text(shape)} of {dtype} "
                    f"({_bytes_text(nbytes)}), over the {MAX_ARRAY_BYTES:,}-byte limit"
                )
            if key == "classes" and count > max_classes:
                raise DataError(_too_many(path, f"array 'classes' names {count:,}", max_classes))


def _too_many(path: Path, what: str, max_classes: int) -> str:
    return (
        f"{path}: {what} classes; at most {max_classes:,} are allowed (a model fitted to it "
        "gets a classifier head that wide); raise the limit with --max-classes N "
        "(load_npz(..., max_classes=N)) if you mean it"
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


def _labels(path: Path, key: str, a: np.ndarray, n: int, max_classes: int) -> torch.Tensor:
    if a.ndim != 1:
        raise DataError(f"{path}: array {key!r} has shape {a.shape}; expected 1-D labels")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise DataError(f"{path}: array {key!r} has dtype {a.dtype}; labels must be integers")
    if len(a) != n:
        raise DataError(f"{path}: array {key!r} has {len(a)} labels but there are {n} images")
    if len(a) and a.min() < 0:
        raise DataError(f"{path}: array {key!r} has a negative label ({a.min()})")
    if len(a) and a.max() >= max_classes:
        raise DataError(
            _too_many(path, f"array {key!r} has label {a.max()}, so {a.max() + 1:,}", max_classes)
        )
    return torch.from_numpy(a.astype(np.int64))


def load_npz(path: str | Path, *, max_classes: int | None = None) -> Dataset:
    """Load an image classification data set from an ``.npz`` file (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The file; its stem becomes the data set's name.
    max_classes : int, optional
        The most classes accepted (default :data:`MAX_CLASSES`, or the bound set by
        :func:`class_limit`).

    Raises
    ------
    DataError
        The file is missing, not an npz archive, an array is missing or malformed, or the data
        set has more than ``max_classes`` classes.
    """
    path = Path(path)
    limit = current_class_limit() if max_classes is None else positive_limit(max_classes)
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    try:
        if not _is_zip(path):
            # np.load would read a lone .npy (unchecked) or refuse a pickle with its own errors.
            raise DataError(
                f"{path} is not an .npz archive (a zip of .npy arrays {list(REQUIRED)})"
            )
        _check_members(path, limit)
        z = np.load(path, allow_pickle=False)
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
    y_train = _labels(path, "y_train", arrays["y_train"], len(x_train), limit)
    y_test = _labels(path, "y_test", arrays["y_test"], len(x_test), limit)
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
