"""Hostile and damaged `.mzip` files: what a file may make us call, and what it may not change.

Each test builds the file an attacker (or an unlucky disk) would, and checks that loading it
refuses with a one-line :class:`ModelError` before any harm: no function outside the registry is
called, no count in a spec or a build record makes us hang or allocate, and a changed byte,
a missing tensor or a NaN weight is seen.
"""

from __future__ import annotations

import copy
import json
import resource
import time
import warnings
from pathlib import Path

import attack_log
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from weight_strategies import PROFILE

import modelzip
from modelzip.cli import main
from modelzip.core.errors import ModelError
from modelzip.core.integrity import content_digest
from modelzip.core.registry import get_method
from modelzip.models import build_from_source, create, model_factory, resolve_model


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["modelzip"])
        return meta, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _write(path: Path, meta: dict, tensors: dict[str, torch.Tensor], *, rehash: bool = True):
    """Write a file as modelzip would (a valid checksum) unless ``rehash`` is false."""
    if rehash:
        meta = {**meta, "sha256": content_digest(tensors, meta)}
    save_file(tensors, str(path), metadata={"modelzip": json.dumps(meta)})
    return path


def _with_source(tmp_path: Path, source: dict) -> Path:
    path = modelzip.save(create("lenet300"), tmp_path / "m.mzip")
    meta, tensors = _read(path)
    return _write(path, {**meta, "source": source}, tensors)


@model_factory(bounds={"width": (1, 64)})
def bounded_factory(width: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, width))


# --- a file may call only registered factories ----------------------------------------------


@pytest.mark.attack("A file names a function to call (gadgets)")
def test_file_cannot_call_a_modelzip_file_writer(tmp_path):
    target = tmp_path / "evil.pth"
    source = {"kind": "factory", "ref": "modelzip.core.atomic:write_text",
              "kwargs": {"path": str(target), "text": "import os"}}  # fmt: skip
    path = _with_source(tmp_path, source)
    with pytest.raises(ModelError, match="not a registered model factory"):
        modelzip.load(path)
    # Trust opens outside code, not modelzip's own helpers.
    with pytest.raises(ModelError, match="not a registered model factory"):
        modelzip.load(path, trust_remote_code=True)
    assert not target.exists()


@pytest.mark.attack("A file names a function to call (gadgets)")
def test_file_cannot_reenter_the_cli(tmp_path, capsys):
    marker = tmp_path / "out.mzip"
    source = {"kind": "factory", "ref": "modelzip.cli:main",
              "kwargs": {"argv": ["train", "lenet300", "--out", str(marker),
                                  "--trust-remote-code"]}}  # fmt: skip
    path = _with_source(tmp_path, source)
    for extra in ([], ["--trust-remote-code"]):
        code = main(["inspect", str(path), "--no-latency", "--json", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert not marker.exists()


@pytest.mark.attack("A file names a function to call (gadgets)")
@pytest.mark.parametrize(
    "ref",
    [
        "numpy:savetxt",
        "yaml:safe_dump",
        "torch.nn:Linear",
        "torch:save",
        "safetensors.torch:save_file",
    ],
)
def test_installed_functions_and_classes_need_registration(ref):
    with pytest.raises(ModelError, match=r"not a registered model factory|not .*ArrayFunction"):
        build_from_source({"kind": "factory", "ref": ref, "kwargs": {}})


@pytest.mark.attack("A file names a function to call (gadgets)")
def test_registered_factory_arguments_are_checked_before_the_call(tmp_path):
    ref = f"{__name__}:bounded_factory"
    assert build_from_source({"kind": "factory", "ref": ref, "kwargs": {"width": 8}})
    with pytest.raises(ModelError, match="no argument 'path'"):
        build_from_source({"kind": "factory", "ref": ref, "kwargs": {"path": "/tmp/x"}})
    with pytest.raises(ModelError, match=r"width=65 is out of range; allowed \[1, 64\]"):
        build_from_source({"kind": "factory", "ref": ref, "kwargs": {"width": 65}})
    with pytest.raises(ModelError, match="out of range"):
        resolve_model(ref, width=10**9)


@pytest.mark.attack("Huge counts in a file's build record")
@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("char_lstm", {"num_layers": 10**9}, "num_layers"),
        ("resnet_small", {"blocks": 10**6}, "blocks"),
        ("vgg_small", {"width": 10**7}, "width"),
        ("lenet300", {"num_classes": 30_000_000}, "num_classes"),
        ("lenet300", {"input_shape": [1, 10**400, 28]}, "input_shape"),
        ("char_lstm", {"dropout": float("inf")}, "dropout"),
    ],
)
def test_zoo_counts_in_a_file_are_bounded_before_building(tmp_path, name, kwargs, field):
    path = _with_source(tmp_path, {"kind": "zoo", "name": name, "kwargs": kwargs})
    with pytest.raises(ModelError, match=field):
        modelzip.load(path)


# --- layer specs --------------------------------------------------------------------------


@pytest.fixture
def compressed_file(tmp_path, model_for_method):
    """A file written by ``method``'s registry example on its test model."""

    def make(method: str) -> Path:
        model, x = model_for_method(method)
        small, _ = modelzip.compress(model, get_method(method).example, sample=x, measure=False)
        return modelzip.save(small, tmp_path / f"{method}.mzip")

    return make


@pytest.mark.attack("Huge or ill-typed values in layer specs")
@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("method", "field", "value"),
    [
        ("hidden_prune", "num_layers", 10**9),  # looped over in Python: hung for minutes
        ("deep_compression", "index_bits", 10**9),  # allocated 3.6 GB before refusal
        ("rnn_ht", "hidden_size", 10**9),  # loaded; its forward then allocated 11 GB
        ("magnitude_prune", "stride", 0),
        ("weight_sharing", "padding", 10**9),
    ],
)
def test_huge_counts_in_layer_specs_are_refused_before_building(
    compressed_file, method, field, value
):
    path = compressed_file(method)
    meta, tensors = _read(path)

    def set_everywhere(spec):
        hits = 0
        for key, item in spec.items():
            if key == field:
                spec[key] = value
                hits += 1
            elif isinstance(item, dict):
                hits += set_everywhere(item)
        return hits

    assert sum(set_everywhere(e["spec"]) for e in meta["layers"].values()), f"no {field}"
    _write(path, meta, tensors)
    with pytest.raises(ModelError, match=f"{field}.* out of range"):
        modelzip.load(path)


# --- integrity ----------------------------------------------------------------------------


@pytest.mark.attack("Damaged file (flipped byte, edited metadata)")
def test_flipped_byte_in_tensor_data_is_detected(tmp_path):
    path = modelzip.save(create("lenet300"), tmp_path / "m.mzip")
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x01  # inside the last tensor's data: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        modelzip.load(path)


@pytest.mark.attack("Damaged file (flipped byte, edited metadata)")
def test_changed_metadata_is_detected(compressed_file):
    path = compressed_file("magnitude_prune")
    meta, tensors = _read(path)
    meta["recipe"] = []
    _write(path, meta, tensors, rehash=False)
    with pytest.raises(ModelError, match="checksum mismatch"):
        modelzip.load(path)


@pytest.mark.attack("NaN or infinite weights")
def test_nonfinite_weights_are_refused_unless_allowed(tmp_path):
    model = create("lenet300")
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    path = modelzip.save(model, tmp_path / "nan.mzip")
    with pytest.raises(ModelError, match=r"fc2.weight.*NaN or infinite"):
        modelzip.load(path)
    loaded = modelzip.load(path, allow_nonfinite=True)
    assert torch.isnan(loaded.fc2.weight[0, 0])
    args = ["inspect", str(path), "--no-latency", "--json"]
    assert main(args) == 2
    assert main([*args, "--allow-nonfinite"]) == 0


@pytest.mark.attack("Missing or extra tensors in a layer")
def test_deep_compression_file_missing_a_bias_is_refused(compressed_file):
    path = compressed_file("deep_compression")
    meta, tensors = _read(path)
    conv = next(n for n, e in meta["layers"].items() if "Conv2d" in e["class"])
    del tensors[f"{conv}.bias"]
    _write(path, meta, tensors)
    with pytest.raises(ModelError, match=rf"layer '{conv}' is missing tensors \['bias'\]"):
        modelzip.load(path)


@pytest.mark.attack("Missing or extra tensors in a layer")
def test_unexpected_tensor_in_a_layer_is_refused(compressed_file):
    path = compressed_file("magnitude_prune")
    meta, tensors = _read(path)
    layer = next(iter(meta["layers"]))
    tensors[f"{layer}.payload"] = torch.zeros(4)
    _write(path, meta, tensors)
    with pytest.raises(ModelError, match=r"unexpected tensors \['payload'\]"):
        modelzip.load(path)


def test_files_without_checksum_from_older_versions_load_with_a_warning(tmp_path):
    model = create("lenet300")
    path = modelzip.save(model, tmp_path / "m.mzip")
    meta, tensors = _read(path)
    del meta["sha256"]
    _write(path, {**meta, "format": "modelzip/1"}, tensors, rehash=False)
    with pytest.warns(UserWarning, match="without a content checksum"):
        loaded = modelzip.load(path)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    # The current format without its checksum is a damaged file, not an old one.
    _write(path, meta, tensors, rehash=False)
    with warnings.catch_warnings(), pytest.raises(ModelError, match="no content checksum"):
        warnings.simplefilter("error")
        modelzip.load(path)


# --- fuzzed layer specs: any value at any place, bounded in time and memory -------------------

FUZZ_METHODS = ("magnitude_prune", "deep_compression", "hidden_prune", "rnn_ht", "tt", "int8")
HOSTILE_VALUES = st.one_of(
    st.sampled_from([0, -1, -(2**31), 2**31, 2**40, 10**9, 10**400, True, None, "x" * 300]),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.lists(st.integers(-(2**40), 2**40), max_size=5),
)
_FILES: dict[str, tuple[dict, dict]] = {}


@pytest.fixture
def fuzz_seeds(compressed_file):
    for method in FUZZ_METHODS:
        if method not in _FILES:
            _FILES[method] = _read(compressed_file(method))
    return _FILES


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for key, item in obj.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(obj, list) and obj and not isinstance(obj[0], (dict, list)):
        yield path  # a list of numbers (ranks, shapes) is replaced whole or item by item
        for i in range(len(obj)):
            yield (*path, i)
    else:
        yield path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.attack("Huge or ill-typed values in layer specs")
@settings(  # the seeds fixture is only read, so sharing it between examples is fine
    PROFILE,
    suppress_health_check=[*PROFILE.suppress_health_check, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzzed_layer_specs_fail_cleanly_within_time_and_memory(fuzz_seeds, tmp_path, data):
    method = data.draw(st.sampled_from(FUZZ_METHODS), label="method")
    meta, tensors = fuzz_seeds[method]
    meta = copy.deepcopy(meta)
    layer = data.draw(st.sampled_from(sorted(meta["layers"])), label="layer")
    spec = meta["layers"][layer]["spec"]
    path = data.draw(st.sampled_from(list(_leaves(spec))), label="path")
    value = data.draw(HOSTILE_VALUES, label="value")
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    file = _write(tmp_path / "fuzz.mzip", meta, tensors)  # overwritten by every example
    attack_log.tried()
    peak = _peak_rss_mb()
    start = time.perf_counter()
    try:
        modelzip.load(file)
    except ModelError as e:
        assert str(e).strip()
    # Not a speed assertion: a bound on work, where the failures it catches took minutes or GBs.
    assert time.perf_counter() - start < 10, f"loading took {time.perf_counter() - start:.0f} s"
    assert _peak_rss_mb() - peak < 1024, "loading raised the peak memory by over 1 GiB"
