"""save/load: one file, no pickle, bit-exact, clear errors on bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import modelzip
from modelzip import Int8Config, MagnitudePruneConfig, compress
from modelzip.core.errors import ModelError
from modelzip.core.integrity import content_digest
from modelzip.models import create


def _x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(5, 1, 28, 28)


@pytest.mark.parametrize(
    "recipe",
    [[], [MagnitudePruneConfig(sparsity=0.8)], [Int8Config()], [Int8Config(activations="float")]],
    ids=["dense", "pruned", "int8", "int8-float"],
)
def test_round_trip_bit_exact(tmp_path, recipe):
    m = create("lenet5")
    small, _ = compress(m, recipe, measure=False)
    path = modelzip.save(small, tmp_path / "m.mzip")
    loaded = modelzip.load(path)
    with torch.inference_mode():
        assert torch.equal(loaded(_x()), small.eval()(_x()))
    assert loaded._modelzip_recipe == [s.to_dict() for s in recipe]


def test_pruned_file_is_really_smaller(tmp_path):
    m = create("lenet300")
    dense_path = modelzip.save(m, tmp_path / "dense.mzip")
    small, report = compress(m, MagnitudePruneConfig(sparsity=0.9), measure=False)
    sparse_path = modelzip.save(small, tmp_path / "sparse.mzip")
    ratio = dense_path.stat().st_size / sparse_path.stat().st_size
    assert ratio > 7.0  # 1 bit of mask + 10% of 32-bit values per weight ≈ 4.1 bits: 7.8x
    assert ratio == pytest.approx(report.compression, rel=0.02)


def test_factory_models_round_trip(tmp_path):
    m = modelzip.models.resolve_model("modelzip.models.lenet:lenet300")
    small, _ = compress(m, MagnitudePruneConfig(sparsity=0.5), measure=False)
    loaded = modelzip.load(modelzip.save(small, tmp_path / "f.mzip"))
    with torch.inference_mode():
        assert torch.equal(loaded(_x()), small(_x()))


def test_model_without_source_gives_clear_error(tmp_path):
    with pytest.raises(ModelError, match="source"):
        modelzip.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "x.mzip")


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        modelzip.load(tmp_path / "missing.mzip")


def test_not_safetensors(tmp_path):
    p = tmp_path / "junk.mzip"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match="not a modelzip file"):
        modelzip.load(p)


def test_safetensors_without_metadata(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(p))
    with pytest.raises(ModelError, match="without modelzip metadata"):
        modelzip.load(p)


@pytest.mark.parametrize(
    "meta, words",
    [
        ("not json", "corrupt"),
        (json.dumps({"format": "other"}), "unsupported format"),
        (
            json.dumps(
                {
                    "format": "modelzip/1",
                    "source": {},
                    "layers": {},
                    "torch_layers": {},
                    "recipe": {},
                }
            ),
            "'recipe'",
        ),
        (
            json.dumps(
                {
                    "format": "modelzip/1",
                    "source": {"kind": "zoo", "name": "lenet300", "kwargs": {}},
                    "recipe": [],
                    "torch_layers": {},
                    "layers": {"fc1": {"class": "os.system", "spec": {}}},
                }
            ),
            "not a modelzip layer",
        ),
        (
            json.dumps(
                {
                    "format": "modelzip/1",
                    "source": {"kind": "factory", "ref": "os:system", "kwargs": {}},
                    "recipe": [],
                    "torch_layers": {},
                    "layers": {},
                }
            ),
            "standard library",
        ),
    ],
)
def test_malformed_metadata(tmp_path, meta, words):
    p = tmp_path / "bad.mzip"
    save_file({"a": torch.zeros(2)}, str(p), metadata={"modelzip": meta})
    with pytest.raises(ModelError, match=words):
        modelzip.load(p)


def test_tensors_that_do_not_fit(tmp_path):
    m = create("lenet300")
    path = modelzip.save(m, tmp_path / "m.mzip")
    meta = modelzip.serialize.read_metadata(path)
    tensors = {"fc1.weight": torch.zeros(3, 3)}
    meta["sha256"] = content_digest(tensors, meta)  # a consistent file, with the wrong tensors
    save_file(tensors, str(path), metadata={"modelzip": json.dumps(meta)})
    with pytest.raises(ModelError, match=r"do not fit|missing"):
        modelzip.load(path)


def test_failed_write_leaves_existing_file(tmp_path, monkeypatch):
    m = create("lenet300")
    path = modelzip.save(m, tmp_path / "m.mzip")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modelzip.serialize, "save_file", boom)
    with pytest.raises(modelzip.ModelzipError, match="No space left"):
        modelzip.save(m, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.mzip"]
