"""Deep Compression end to end: the file on disk is the size reported and decodes exactly."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

import modelzip
from modelzip.core.errors import ConfigError, DataError
from modelzip.joint.coded_format import (
    INDEX_BITS_SEARCH,
    HuffmanConv2d,
    HuffmanLinear,
    best_index_bits,
    coded_layer,
    decode_streams,
    layer_streams,
)
from modelzip.joint.deep_compression import (
    DeepCompressionConfig,
    breakdown,
    deep_compression,
    share,
    to_coded,
)
from modelzip.joint.weight_sharing import SharedConv2d, SharedLinear, WeightSharingConfig
from modelzip.models import create
from modelzip.train import TrainConfig, evaluate


@pytest.fixture(scope="module")
def digits_model(digits):
    torch.manual_seed(0)
    model = create("lenet300", input_shape=(1, 8, 8))
    modelzip.train.train(model, digits, TrainConfig(epochs=2, lr=0.1, val_size=0), progress=False)
    return model.eval()


def test_pipeline_file_size_is_reported_size_and_decodes_identically(
    digits, digits_model, tmp_path
):
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    finetune = TrainConfig(epochs=1, lr=0.01, val_size=0)
    coded, result = deep_compression(
        digits_model, digits, sparsity={"fc1": 0.9, "fc2": 0.8, "fc3": 0.5}, bits=4,
        index_bits=None, value_dtype="float16", finetune=finetune, path=tmp_path / "m.mzip",
    )  # fmt: skip
    # The caller's model is untouched.
    for k, v in digits_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    path = result.path
    assert path is not None and path.stat().st_size == result.file_bytes
    # The file is the coded tensors plus the safetensors header, nothing else.
    (header,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert result.file_bytes == 8 + header + modelzip.core.counting.module_bytes(coded)
    assert result.stages["huffman"] == modelzip.core.counting.module_bytes(coded)
    loaded = modelzip.load(path)
    x = digits.x_test
    with torch.inference_mode():
        assert torch.equal(loaded(x), coded(x))
    for name in ("fc1", "fc2", "fc3"):
        layer = loaded.get_submodule(name)
        assert isinstance(layer, HuffmanLinear)
        assert torch.equal(layer.mask, coded.get_submodule(name).mask)
    # Stages shrink in order; Huffman is lossless (same accuracy as the quantized model).
    s = result.stages
    assert s["original"] > s["pruned"] > s["quantized"] > s["huffman"]
    assert result.ratio > 10
    assert result.accuracy["huffman"] == pytest.approx(evaluate(loaded, digits)["accuracy"])
    assert result.accuracy["huffman"] > 0.8
    fc1 = s["layers"]["fc1"]
    assert fc1["kept_fraction"] == pytest.approx(0.1, abs=1e-3)


def test_coded_layer_is_the_shared_layer_and_smaller(digits_model):
    shared = share(digits_model, bits=5)
    coded = to_coded(share(digits_model, bits=5), index_bits=5)
    x = torch.rand(16, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(coded(x), shared(x))
    for name in ("fc1", "fc2"):
        a, b = shared.get_submodule(name), coded.get_submodule(name)
        assert isinstance(b, HuffmanLinear) and b.index_bits == 5
        assert torch.equal(a.codes, b.codes) and torch.equal(a.centroids, b.centroids)
        # Unpruned: every gap is 0 (one symbol, one bit each), and Huffman codes the 5-bit
        # cluster indices in at most 5 bits each.
        stats = b.stream_stats()
        assert stats["entries"] == a.mask.numel() and stats["padding"] == 0
        assert stats["huffman_index_bits"] == 1.0
        assert stats["huffman_weight_bits"] <= 5.0


def test_float16_values_still_decode_exactly(tmp_path):
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(2, 6, 3, padding=1)
    shared = SharedConv2d.from_dense(conv, WeightSharingConfig(bits=3))
    coded = coded_layer(shared, index_bits=4, value_dtype="float16")
    assert isinstance(coded, HuffmanConv2d)
    assert coded.packed_state()["centroids"].dtype == torch.float16
    rebuilt = HuffmanConv2d.from_spec(coded.spec())
    rebuilt.load_packed_state(coded.packed_state())
    x = torch.randn(2, 2, 7, 7)
    assert torch.equal(rebuilt(x), coded(x))
    torch.testing.assert_close(coded(x), shared(x), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("index_bits", [1, 3, 5, 8])
def test_streams_roundtrip_with_padding_entries(index_bits):
    g = torch.Generator().manual_seed(index_bits)
    mask = torch.rand(40, 50, generator=g) < 0.05  # long runs of zeros: padding entries
    codes = torch.randint(0, 16, (40, 50), generator=g, dtype=torch.int32) * mask
    values, gaps = layer_streams(codes, mask, index_bits)
    if index_bits <= 3:
        assert (values == 0).any()  # some padding entries were needed
    got_codes, got_mask = decode_streams(values, gaps, (40, 50), 4, index_bits)
    assert torch.equal(got_mask, mask)
    assert torch.equal(got_codes * got_mask, codes)


def test_best_index_bits_codes_smallest():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(100, 100, generator=g) < 0.05
    shared = SharedLinear.from_dense(_linear_with(mask), WeightSharingConfig(bits=2))
    best = best_index_bits(shared.codes, shared.mask)
    sizes = {b: coded_layer(shared, b).storage_bytes() for b in INDEX_BITS_SEARCH}
    assert sizes[best] == min(sizes.values())
    assert coded_layer(shared, None).index_bits == best


def _linear_with(mask: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(mask.shape[1], mask.shape[0])
    with torch.no_grad():
        layer.weight.mul_(mask)
    return layer


def test_corrupt_streams_raise_data_error():
    values, gaps = np.array([1, 2, 3]), np.array([0, 1, 2])
    with pytest.raises(DataError, match="outside"):
        decode_streams(np.array([1, 99, 3]), gaps, (4, 4), 2, 5)
    with pytest.raises(DataError, match="run past"):
        decode_streams(values, np.array([0, 10, 10]), (4, 4), 2, 5)
    with pytest.raises(DataError, match="symbols but"):
        decode_streams(values, gaps[:2], (4, 4), 2, 5)


def test_method_on_one_layer_and_config_checks():
    torch.manual_seed(0)
    model = create("lenet5").eval()
    small, report = modelzip.compress(
        model, DeepCompressionConfig(sparsity=0.9, bits=4, index_bits=None), measure=False,
        evaluate=False,
    )  # fmt: skip
    assert {c.after for c in report.layers} == {"HuffmanConv2d", "HuffmanLinear"}
    layer = small.get_submodule("fc1")
    assert layer.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert layer.used_centroids() == 16
    assert report.after.size_bytes < report.before.size_bytes / 15
    with pytest.raises(ConfigError, match="sparsity"):
        DeepCompressionConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="index_bits"):
        DeepCompressionConfig(index_bits=0)
    cfg = DeepCompressionConfig(sparsity=0.5, bits=3, index_bits=None, value_dtype="float16")
    assert DeepCompressionConfig.from_dict(cfg.to_dict()) == cfg


def test_breakdown_without_original_and_unknown_layer_names(digits_model):
    coded = to_coded(share(digits_model, bits=2))
    stages = breakdown(coded)
    assert "original" not in stages and stages["huffman"] < stages["dense"]
    with pytest.raises(ConfigError, match="no selected layer"):
        share(digits_model, bits={"fc9": 3})


def test_cli_writes_the_run_dir_and_refuses_bad_numbers(tmp_path, capsys):
    from modelzip.cli import main

    weights = tmp_path / "base.mzip"
    assert main(["train", "lenet300", "--dataset", "digits", "--epochs", "1", "--out",
                 str(weights), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    run = tmp_path / "run"
    args = ["deep", str(weights), "--dataset", "digits", "--sparsity", "0.8", "--bits", "3"]
    assert main([*args, "--float16", "--out", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (run / "model.mzip").stat().st_size == result["file_bytes"]
    assert (run / "deep_compression.json").is_file()
    assert modelzip.load(run / "model.mzip").get_submodule("fc1").weight_bits == 3
    assert main([*args[:-2], "--bits", "0", "--out", str(run)]) == 2
    assert "bits=0" in capsys.readouterr().err


@pytest.mark.parametrize("index_bits", [1, 2, 4, 8])
def test_relative_entries_counts_the_sparse_format_entries(index_bits):
    from modelzip.joint.deep_compression import relative_entries
    from modelzip.prune.sparse_format import encode_relative

    g = torch.Generator().manual_seed(index_bits)
    weight = torch.randn(30, 70, generator=g) * (torch.rand(30, 70, generator=g) < 0.08)
    encoded = encode_relative(weight, index_bits)
    assert relative_entries(weight != 0, index_bits) == len(encoded.arrays["values"])


def test_fully_pruned_layer_codes_and_loads(tmp_path):
    layer = torch.nn.Linear(12, 4)
    with torch.no_grad():
        layer.weight.zero_()
    coded = HuffmanLinear.from_dense(layer, WeightSharingConfig(bits=2))
    assert coded.index_bits == 5 and not coded.mask.any()
    rebuilt = HuffmanLinear.from_spec(coded.spec())
    rebuilt.load_packed_state(coded.packed_state())
    x = torch.randn(3, 12)
    assert torch.equal(rebuilt(x), coded(x))
    torch.testing.assert_close(coded(x), layer(x))
