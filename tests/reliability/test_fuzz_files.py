"""Fuzzed inputs: recipes, accelerator specs, ``.npz`` data sets and ``.mzip`` files.

Random and mutated files must give a modelzip error with a clear message (or load, when the
mutation left them valid): never another exception from deep in a library, never a hang (the
pytest timeout), never an allocation the file's size does not justify.
"""

from __future__ import annotations

import random

import attack_log
import pytest
import torch
import yaml
from file_mutations import (
    RECIPE_SEED,
    lenet_layer_meta,
    mutate,
    mzip_seed,
    mzip_with_metadata,
    npz_seed,
    spec_seed,
)
from hypothesis import given
from hypothesis import strategies as st
from weight_strategies import PROFILE

import modelzip
from modelzip.core.errors import ModelzipError
from modelzip.data.npz import load_npz
from modelzip.hardware.spec import AcceleratorSpec
from modelzip.recipe import Recipe
from modelzip.sweep import SweepConfig

# Plain data as YAML can hold it: what a hand-written (or garbled) recipe may contain.
YAML_DATA = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["magnitude_prune", "svd", "int8", "method", "select", "types", "bits"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# YAML reads unquoted on/off/yes/no as booleans and numbers as numbers, so keys may be those.
STEP_KEYS = st.one_of(
    st.sampled_from(
        ["method", "sparsity", "bits", "rank", "rank_fraction", "select", "granularity", "n", "m"]
    ),
    st.booleans(),
    st.integers(-3, 3),
)
STEPS = st.lists(st.dictionaries(STEP_KEYS, YAML_DATA, max_size=5), max_size=4)


def _expect_clean(read, path):
    """``read(path)`` returns or raises a ModelzipError with a message; anything else fails."""
    attack_log.tried()
    try:
        return read(path)
    except ModelzipError as e:
        assert str(e).strip(), "an error without a message"
        return None


class _Seeds(dict):
    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing case
        return f"seeds({', '.join(f'{k}: {len(v)} bytes' for k, v in self.items())})"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    return _Seeds(recipe=RECIPE_SEED, spec=spec_seed(), npz=npz_seed(), mzip=mzip_seed(tmp))


@pytest.mark.attack("Random recipes")
@PROFILE
@given(steps=st.one_of(STEPS, YAML_DATA))
def test_random_recipes(tmp_path_factory, steps):
    path = tmp_path_factory.mktemp("r") / "recipe.yaml"
    path.write_text(yaml.safe_dump(steps))
    _expect_clean(Recipe.load, path)


@pytest.mark.attack("Random accelerator specs")
@PROFILE
@given(data=st.dictionaries(st.one_of(st.text(max_size=16), STEP_KEYS), YAML_DATA, max_size=8))
def test_random_accelerator_specs(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("s") / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    _expect_clean(AcceleratorSpec.load, path)


READERS = {
    "recipe": (Recipe.load, "recipe.yaml"),
    "spec": (AcceleratorSpec.load, "spec.yaml"),
    "npz": (load_npz, "data.npz"),
    "mzip": (modelzip.load, "model.mzip"),
}


@pytest.mark.attack("Mutated files (recipe, spec, .npz, .mzip)")
@pytest.mark.parametrize("kind", sorted(READERS))
@PROFILE
@given(seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 6))
def test_mutated_files(seeds, tmp_path_factory, kind, seed, rounds):
    read, name = READERS[kind]
    path = tmp_path_factory.mktemp(kind) / name
    path.write_bytes(mutate(seeds[kind], random.Random(seed), rounds))
    _expect_clean(read, path)


@pytest.mark.attack("Random bytes as files")
@pytest.mark.parametrize("kind", sorted(READERS))
@PROFILE
@given(data=st.binary(max_size=512))
def test_random_bytes(tmp_path_factory, kind, data):
    read, name = READERS[kind]
    path = tmp_path_factory.mktemp(kind) / name
    path.write_bytes(data)
    _expect_clean(read, path)


SIZES = st.one_of(st.integers(-3, 5), st.sampled_from([0, 2**31, 2**40, 10**12]), YAML_DATA)


@pytest.mark.attack("Huge declared layer sizes")
@PROFILE
@given(
    kind=st.sampled_from(["Linear", "Conv2d", "Embedding", "BatchNorm1d", "Identity", "Evil"]),
    spec=st.dictionaries(
        st.sampled_from(
            ["in_features", "out_features", "in_channels", "out_channels", "kernel_size",
             "num_embeddings", "embedding_dim", "num_features", "bias", "stride"]
        ),
        SIZES,
        max_size=6,
    ),
    name=st.sampled_from(["fc1", "fc2", "", "fc1.weight", "..", "nope.deeper", "fc3"]),
)  # fmt: skip
def test_declared_layer_sizes_are_bounded(tmp_path_factory, kind, spec, name):
    path = tmp_path_factory.mktemp("m") / "m.mzip"
    path.write_bytes(mzip_with_metadata(lenet_layer_meta(**{name: {"class": kind, "spec": spec}})))
    _expect_clean(modelzip.load, path)


@pytest.mark.attack("Huge declared layer sizes")
def test_huge_declared_layer_is_refused_before_allocating(tmp_path):
    path = tmp_path / "m.mzip"
    huge = {"class": "Linear", "spec": {"in_features": 10**6, "out_features": 10**6}}
    path.write_bytes(mzip_with_metadata(lenet_layer_meta(fc1=huge)))
    with pytest.raises(ModelzipError, match=r"declare .* bytes of tensors"):
        modelzip.load(path)


@pytest.mark.attack("Header, nesting and YAML bombs")
def test_huge_header_length_is_refused_unread(tmp_path):
    path = tmp_path / "m.mzip"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelzipError, match="header claims"):
        modelzip.load(path)


@pytest.mark.attack("Header, nesting and YAML bombs")
def test_deeply_nested_metadata_is_refused(tmp_path):
    path = tmp_path / "m.mzip"
    meta_text = "[" * 100_000 + "]" * 100_000
    from safetensors.torch import save

    path.write_bytes(save({"w": torch.zeros(1)}, metadata={"modelzip": meta_text}))
    with pytest.raises(ModelzipError, match="corrupt modelzip metadata"):
        modelzip.load(path)


@pytest.mark.attack("Header, nesting and YAML bombs")
def test_yaml_bombs_are_refused(tmp_path):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    cases = {
        "laughs.yaml": (laughs, "aliases"),
        "deep.yaml": ("[" * 5000 + "]" * 5000, "nested deeper"),
        "big.yaml": ("# " + "x" * (2 << 20), "limited to 1 MiB"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ModelzipError, match=message):
            Recipe.load(tmp_path / name)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelzipError, match=r"not UTF-8|not valid YAML"):
        Recipe.load(tmp_path / "binary.yaml")


@pytest.mark.attack("Header, nesting and YAML bombs")
def test_npz_zip_bomb_is_refused_before_decompressing(tmp_path):
    import zipfile

    import numpy as np

    path = tmp_path / "bomb.npz"
    header = io_header(np.dtype(np.uint8), (10**6, 10**6, 10))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x_train.npy", header + b"\x00" * 1024)
    with pytest.raises(ModelzipError, match=r"over the .*-byte limit"):
        load_npz(path)


def io_header(dtype, shape) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": shape}
    )  # fmt: skip
    return buffer.getvalue()  # magic string included


SWEEP_KEYS = pytest.mark.attack("Non-string keys in sweep files (atheris finding)")


@pytest.mark.parametrize(
    ("load", "text", "says"),
    [
        # atheris, fuzz_spec: ``on:`` is the boolean True to YAML; sorting it with the field
        # names raised TypeError in ConfigBase.from_dict.
        (AcceleratorSpec.load, "name: eyeriss\nrows: 12\non: 1.0\n", "field names must be strings"),
        (AcceleratorSpec.load, "rows: 12\n3: 4\n", "field names must be strings"),
        (Recipe.load, "- method: svd\n  select: {on: 1}\n", "Select field names must be strings"),
        # atheris, fuzz_grid: a grid key YAML reads as null (or a number, a boolean) raised
        # AttributeError ('NoneType' object has no attribute 'split') in the key check.
        *(
            pytest.param(SweepConfig.load, text, "must be a string", marks=SWEEP_KEYS)
            for text in (
                "base: {model: lenet300}\ngrid:\n  null: [0.5]\n",
                "base: {model: lenet300}\ngrid:\n  3: [0.5]\n",
                "base: {model: lenet300}\nrandom: {n: 2, seed: 0, space: {on: [1, 2]}}\n",
            )
        ),
    ],
)
def test_regression_non_string_keys_are_refused(tmp_path, load, text, says):
    path = tmp_path / "file.yaml"
    path.write_text(text)
    with pytest.raises(ModelzipError, match=says):
        load(path)
