"""Errors a user can cause with their data and models end as one line ``error: ...`` and exit 2.

Each case here used to end in a traceback (or, for the class count, in building a classifier head
of 30 million outputs): malformed ``.npy`` headers inside an ``.npz``, labels beyond the model's
classes, images of another size than the model's, images given to a language model and text to
an image model, and a zoo model fitted to another data set than the zoo default (whose sample
inputs were built with the default shape).
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

import modelzip
from modelzip.api import check_data_fits
from modelzip.cli import MAX_CLASSES_HELP, main
from modelzip.core.errors import DataError
from modelzip.data import load_dataset
from modelzip.data.npz import MAX_CLASSES, class_limit, load_npz
from modelzip.models import create, resolve_model
from modelzip.models.shapes import model_input_shape, sample_input

# --- helpers ---------------------------------------------------------------------------------


pytestmark = pytest.mark.attack("Data that does not fit (malformed .npz, shapes, labels, kinds)")


def _arrays(n: int = 8, m: int = 4, shape=(8, 8), classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        "y_train": np.arange(n) % classes,
        "x_test": rng.integers(0, 256, (m, *shape), dtype=np.uint8),
        "y_test": np.arange(m) % classes,
    }


def _npz(path, **arrays) -> str:
    np.savez(path, **{**_arrays(), **arrays})
    return str(path)


def _npy_header(header: str | bytes) -> bytes:
    """A version 1.0 ``.npy`` member holding ``header`` (padded as numpy pads) and no data."""
    raw = header.encode("latin1") if isinstance(header, str) else header
    raw += b" " * (-(len(raw) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw


def _npz_with_member(path, key: str, member: bytes) -> str:
    """A valid data set whose ``key`` member is replaced by the bytes ``member``."""
    buffer = io.BytesIO()
    np.savez(buffer, **_arrays())
    with zipfile.ZipFile(buffer) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members[f"{key}.npy"] = member
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


def _header(shape: str, descr: str = "'<f4'") -> str:
    return f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}"


def _save(model: torch.nn.Module, path) -> str:
    modelzip.save(model, path)
    return str(path)


def _error(capsys, *argv: str) -> str:
    """Run the CLI; assert exit status 2 and one stderr line ``error: ...``; return that line."""
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Saved tiny models: LeNet-300-100 for 28x28 and 8x8 images, small char LSTMs (for the
    Shakespeare vocabulary and for 10 characters), and a LeNet-300-100 built through a
    ``package.module:factory`` reference (no zoo shape)."""
    tmp = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return {
        "lenet28": _save(create("lenet300"), tmp / "lenet28.mzip"),
        "lenet8": _save(create("lenet300", input_shape=[1, 8, 8]), tmp / "lenet8.mzip"),
        "lstm": _save(
            create("char_lstm", embed_dim=8, hidden_size=16, num_layers=1), tmp / "lstm.mzip"
        ),
        "lstm10": _save(
            create("char_lstm", vocab_size=10, embed_dim=8, hidden_size=16, num_layers=1),
            tmp / "lstm10.mzip",
        ),
        "factory28": _save(resolve_model("modelzip.models.lenet:lenet300"), tmp / "factory28.mzip"),
    }


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("- method: magnitude_prune\n  sparsity: 0.5\n")
    return str(path)


# --- .npz headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("{'descr': garbage!!! ###", "unreadable .npy header"),  # tokenizer error (TokenError)
        ("[1, 2, 3]", "unreadable .npy header"),  # not a dict
        ("{'descr': '<f4'}", "unreadable .npy header"),  # keys missing
        (_header("(8, 8, 8)", "'<nonsense'"), "unreadable .npy header"),  # no such dtype
        (b"\xff\xfe{'descr'", "unreadable .npy header"),  # not text
        (_header("(1" + "0" * 400 + ", 8, 8)"), "about 10^"),  # a declared 10^400 images
        (_header("(" + ", ".join(["100000"] * 40) + ")"), "40 dimensions"),  # product overflows
        (_header("(-8, 8, 8)"), "negative dimension"),
    ],
)
def test_npz_malformed_npy_header_is_a_data_error(tmp_path, header, problem):
    path = _npz_with_member(tmp_path / "bad.npz", "x_train", _npy_header(header))
    with pytest.raises(DataError, match="'x_train'") as info:
        load_npz(path)
    assert problem in str(info.value) and len(str(info.value)) < 400


def test_npz_that_is_a_lone_npy_is_refused_before_numpy_reads_it(tmp_path):
    # np.load parses a lone .npy itself (its TokenError escaped), even with a zip appended.
    zipped = io.BytesIO()
    np.savez(zipped, **_arrays())
    for name, data in (
        ("lone.npz", _npy_header("{'descr': garbage!!! ###")),
        ("disguised.npz", _npy_header(_header("(10000000000, 8, 8)")) + zipped.getvalue()),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=r"not an \.npz archive"):
            load_npz(tmp_path / name)


def test_npz_class_names_are_bounded_from_the_header(tmp_path):
    # The 'classes' member declares 30 million names and holds none: refused from its header,
    # before numpy would decode (or choke on) the data.
    member = _npy_header(_header("(30000000,)", "'<U1'"))
    path = _npz_with_member(tmp_path / "many.npz", "classes", member)
    with pytest.raises(DataError, match=r"'classes' names 30,000,000 classes; at most 100,000"):
        load_npz(path)


def test_npz_labels_are_bounded_and_the_bound_is_adjustable(tmp_path):
    big = MAX_CLASSES  # label MAX_CLASSES means MAX_CLASSES + 1 classes
    path = _npz(tmp_path / "big.npz", y_test=np.array([0, 1, 2, big]))
    with pytest.raises(DataError, match=rf"'y_test' has label {big}.*at most {MAX_CLASSES:,}"):
        load_dataset(path)
    assert load_npz(path, max_classes=big + 1).num_classes == big + 1
    assert load_dataset(path, max_classes=big + 1).num_classes == big + 1
    with class_limit(big + 1):
        assert load_npz(path).num_classes == big + 1
    with pytest.raises(DataError, match="at most 3 "):
        load_npz(_npz(tmp_path / "four.npz", y_test=np.array([0, 1, 2, 3])), max_classes=3)
    names = _npz(tmp_path / "names.npz", classes=np.array(list("abcd")))
    with pytest.raises(DataError, match="'classes' names 4 classes; at most 3"):
        load_npz(names, max_classes=3)
    with pytest.raises(DataError, match="positive int"):
        load_npz(path, max_classes=0)


def test_cli_npz_errors_are_one_line(capsys, tmp_path, models):
    garbage = _npz_with_member(
        tmp_path / "g.npz", "x_train", _npy_header("{'descr': garbage!!! ###")
    )
    assert "'x_train'" in _error(capsys, "eval", models["lenet8"], "--dataset", garbage)
    huge = _npz_with_member(
        tmp_path / "h.npz", "y_train", _npy_header(_header("(1" + "0" * 400 + ",)"))
    )
    assert "'y_train'" in _error(capsys, "eval", models["lenet8"], "--dataset", huge)
    many = _npz_with_member(
        tmp_path / "m.npz", "classes", _npy_header(_header("(30000000,)", "'<U1'"))
    )
    line = _error(capsys, "train", "lenet300", "--dataset", many, "--out", str(tmp_path / "x"))
    assert "30,000,000" in line and "--max-classes" in line


def test_cli_max_classes_flag(capsys, tmp_path, models):
    path = _npz(tmp_path / "four.npz", y_test=np.array([0, 1, 2, 3]))
    line = _error(capsys, "eval", models["lenet8"], "--dataset", path, "--max-classes", "3")
    assert "at most 3 " in line
    line = _error(capsys, "eval", models["lenet8"], "--dataset", path, "--max-classes", "0")
    assert "positive" in line
    assert str(MAX_CLASSES) in MAX_CLASSES_HELP
    capsys.readouterr()
    assert main(["eval", models["lenet8"], "--dataset", path, "--max-classes", "4",
                 "--no-latency", "--json"]) == 0  # fmt: skip


# --- data against model ----------------------------------------------------------------------


def test_labels_beyond_the_models_classes(capsys, tmp_path, models, recipe):
    path = _npz(tmp_path / "fifty.npz", y_test=np.array([0, 1, 2, 50]))
    for argv in (
        ["eval", models["lenet8"], "--no-latency"],
        ["compress", models["lenet8"], "--recipe", recipe, "--out", str(tmp_path / "o.mzip"),
         "--no-latency", "--finetune-epochs", "1"],
    ):  # fmt: skip
        line = _error(capsys, *argv, "--dataset", path)
        assert "labels up to 50" in line and "10 outputs" in line
    assert not (tmp_path / "o.mzip").exists()


def test_images_of_another_shape(capsys, tmp_path, models, recipe):
    small = _npz(tmp_path / "small.npz")
    rgb = _npz(
        tmp_path / "rgb.npz",
        x_train=np.zeros((8, 3, 8, 8), np.uint8),
        x_test=np.zeros((4, 3, 8, 8), np.uint8),
    )
    line = _error(capsys, "eval", models["lenet28"], "--dataset", small, "--no-latency")
    assert "1x28x28" in line and "1x8x8" in line
    out = str(tmp_path / "o.mzip")
    line = _error(capsys, "compress", models["lenet28"], "--dataset", small, "--recipe", recipe,
                  "--out", out, "--no-latency")  # fmt: skip
    assert "1x28x28" in line and "1x8x8" in line
    line = _error(capsys, "eval", models["lenet8"], "--dataset", rgb, "--no-latency")
    assert "1x8x8" in line and "3x8x8" in line


def test_images_of_another_shape_without_a_zoo_shape(capsys, tmp_path, models):
    # A factory-built model records no zoo name: a trial forward pass finds the mismatch.
    assert model_input_shape(modelzip.load(models["factory28"])) is None
    line = _error(capsys, "eval", models["factory28"], "--dataset", _npz(tmp_path / "s.npz"))
    assert "'s'" in line and "1x8x8" in line and "does not fit" in line


def test_images_for_a_language_model_and_text_for_an_image_model(
    capsys, tmp_path, models, recipe, monkeypatch
):
    monkeypatch.setenv("MODELZIP_CACHE", str(tmp_path / "cache"))
    for argv in (
        ["eval", models["lstm"], "--dataset", "digits", "--no-latency"],
        ["compress", models["lstm"], "--dataset", "digits", "--recipe", recipe,
         "--out", str(tmp_path / "o.mzip"), "--no-latency"],
        # the zoo name without weights trains a baseline: refused before training
        ["eval", "char_lstm", "--dataset", "digits", "--no-latency"],
        ["train", "char_lstm", "--dataset", "digits", "--out", str(tmp_path / "t.mzip")],
    ):  # fmt: skip
        line = _error(capsys, *argv)
        assert "token ids" in line and "'digits'" in line and "1x8x8" in line
    line = _error(capsys, "eval", models["lenet8"], "--dataset", "shakespeare", "--no-latency")
    assert "text corpus" in line and "1x8x8" in line
    line = _error(capsys, "eval", models["lstm10"], "--dataset", "shakespeare", "--no-latency")
    assert "vocabulary of 84 characters" in line and "10 rows" in line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_check_data_fits_in_the_api(digits):
    model = create("lenet300", input_shape=[1, 8, 8])
    check_data_fits(model, digits)  # fits: nothing raised, the mode is kept
    assert model.training
    wrong = create("lenet300")
    with pytest.raises(DataError, match=r"1x28x28.*1x8x8"):
        modelzip.compress(wrong, modelzip.MagnitudePruneConfig(sparsity=0.5), digits)
    with pytest.raises(DataError, match=r"labels up to 9.*5 outputs"):
        modelzip.model_stats(create("lenet300", input_shape=[1, 8, 8], num_classes=5), data=digits)


# --- the README's own-data flow: a zoo model fitted to digits ---------------------------------


def test_model_input_shape_prefers_the_build_record():
    assert model_input_shape(create("lenet300", input_shape=[1, 8, 8])) == (1, 8, 8)
    assert model_input_shape(create("lenet300")) == (1, 28, 28)
    assert model_input_shape(create("char_lstm", hidden_size=8, embed_dim=4)) == (128,)
    assert model_input_shape(torch.nn.Linear(2, 2)) is None
    sample = sample_input(create("char_lstm", hidden_size=8, embed_dim=4), batch=2)
    assert sample.shape == (2, 128) and sample.dtype == torch.long
    assert sample_input(create("lenet300", input_shape=[1, 8, 8]), batch=3).shape == (3, 1, 8, 8)


def test_digits_model_inspect_estimate_compress(capsys, tmp_path, models, recipe):
    path = models["lenet8"]
    capsys.readouterr()
    assert main(["inspect", path, "--json", "--no-latency"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == 64 * 300 + 300 * 100 + 100 * 10
    assert main(["estimate", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"]
    run_dir = tmp_path / "run"
    out = str(tmp_path / "o.mzip")
    argv = ["compress", path, "--dataset", "digits", "--recipe", recipe, "--out", out,
            "--no-latency", "--run-dir", str(run_dir), "--json"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert (run_dir / "estimate.json").is_file()
    # ... and the compressed file, a zoo record with its recorded shape, inspects as well
    assert main(["inspect", out, "--no-latency", "--json"]) == 0


def test_bad_input_shape_flag_is_one_line(capsys, models):
    line = _error(capsys, "inspect", models["lenet8"], "--input-shape", "1,x,8")
    assert "--input-shape" in line
