"""ONNX export keeps the bits: k-bit, ternary, binary, multi-bit and shared weights are written as
narrow code tensors (UINT4/UINT2 through DequantizeLinear, or codes indexing a table), not float."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import modelzip
from modelzip.api import compress
from modelzip.deploy import trainable
from modelzip.export import export_onnx, run_onnx, to_onnx_bytes
from modelzip.models import create
from modelzip.recipe import Recipe

torch.set_num_threads(1)

_CODE_TYPES = {onnx.TensorProto.UINT2, onnx.TensorProto.UINT4, onnx.TensorProto.UINT8}
_FLOAT = onnx.TensorProto.FLOAT


def _lenet300(steps: list[dict], sample: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    small, _ = compress(
        create("lenet300").eval(), Recipe.from_list(steps), sample=sample, evaluate=False,
        measure=False,
    )  # fmt: skip
    return small.eval()


def _initializer_sizes(data: bytes) -> dict[int, int]:
    """Elements held by the file's initializers, per ONNX element type."""
    sizes: dict[int, int] = {}
    for init in onnx.load_from_string(data).graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        sizes[init.data_type] = sizes.get(init.data_type, 0) + count
    return sizes


def _weights(model_name: str) -> int:
    return sum(p.numel() for n, p in create(model_name).named_parameters() if n.endswith("weight"))


def _assert_matches(small: nn.Module, data: bytes, atol: float = 1e-5) -> None:
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        # The file holds the compressed layers' decoded weights: compare with them (a deployed
        # layer may run an int8 kernel in PyTorch instead).
        ref = trainable(small).eval()(x)
    torch.testing.assert_close(run_onnx(data, x), ref, atol=atol, rtol=1e-4)


def test_4bit_lenet300_onnx_is_within_1_3x_of_its_mzip(tmp_path: Path) -> None:
    sample = torch.rand(4, 1, 28, 28)
    small = _lenet300([{"method": "quantize_weights", "bits": 4}], sample)
    mzip = modelzip.save(small, tmp_path / "m.mzip").stat().st_size
    result = export_onnx(small, tmp_path / "m.onnx", sample)
    assert result.file_bytes < 1.3 * mzip, (result.file_bytes, mzip)
    assert result.opset == 21  # the first opset whose DequantizeLinear reads uint4
    assert set(result.layers.values()) == {"4-bit codes → DequantizeLinear"}
    _assert_matches(small, (tmp_path / "m.onnx").read_bytes())


@pytest.mark.parametrize(
    ("steps", "code_type", "form"),
    [
        ([{"method": "quantize_weights", "bits": 4}], "UINT4", "DequantizeLinear"),
        ([{"method": "quantize_weights", "bits": 2}], "UINT2", "DequantizeLinear"),
        ([{"method": "quantize_weights", "bits": 3, "levels": "uniform-affine"}], "UINT4",
         "DequantizeLinear + offset"),
        ([{"method": "quantize_weights", "bits": 4, "granularity": "group"}], "UINT4",
         "DequantizeLinear"),
        ([{"method": "quantize_weights", "bits": 4, "levels": "log2"}], "UINT4", "table"),
        ([{"method": "quantize_weights", "bits": 3, "levels": "adaptive"}], "UINT4", "table"),
        ([{"method": "quantize_weights", "bits": 6}], "UINT8", "DequantizeLinear"),
        ([{"method": "binary"}], "UINT2", "DequantizeLinear + offset"),
        ([{"method": "ternary"}], "UINT2", "DequantizeLinear"),
        ([{"method": "ternary", "asymmetric": True}], "UINT2", "table"),
        ([{"method": "multibit", "num_bases": 3}], "UINT4", "table"),
        ([{"method": "weight_sharing", "bits": 4}], "UINT4", "table"),
        # Pruned weights take the grid's zero code (no extra bit); log2 tables hold a zero too.
        ([{"method": "magnitude_prune", "sparsity": 0.8},
          {"method": "sparse_quantize", "bits": 4}], "UINT4", "DequantizeLinear"),
        ([{"method": "magnitude_prune", "sparsity": 0.8},
          {"method": "sparse_quantize", "bits": 4, "levels": "log2"}], "UINT4", "table"),
        # Without a zero level the table gets one, and the codes a bit more (4 + 1 → uint8).
        ([{"method": "magnitude_prune", "sparsity": 0.8},
          {"method": "sparse_quantize", "bits": 4, "levels": "uniform-affine"}], "UINT8",
         "table"),
    ],
    ids=["int4", "int2", "affine3", "group4", "log2", "adaptive3", "int6", "binary", "ternary",
         "ternary_asym", "multibit3", "sharing4", "sparse_int4", "sparse_log2", "sparse_affine"],
)  # fmt: skip
def test_coded_methods_store_codes_not_float(steps: list[dict], code_type: str, form: str) -> None:
    sample = torch.rand(4, 1, 28, 28)
    small = _lenet300(steps, sample)
    forms: dict[str, str] = {}
    data = to_onnx_bytes(small, sample, forms=forms)
    assert forms and all(form in f and "dense" not in f for f in forms.values()), forms
    sizes = _initializer_sizes(data)
    weights = _weights("lenet300")
    # Every weight is a code of the expected width; float holds only scales, tables and biases.
    assert sizes.get(getattr(onnx.TensorProto, code_type), 0) >= weights, sizes
    assert sizes.get(_FLOAT, 0) < 0.05 * weights, sizes
    _assert_matches(small, data)


def test_codes_stay_uint8_below_opset_21() -> None:
    sample = torch.rand(4, 1, 28, 28)
    small = _lenet300([{"method": "quantize_weights", "bits": 4}], sample)
    data = to_onnx_bytes(small, sample, opset=17)
    assert onnx.load_from_string(data).opset_import[0].version == 17
    assert _initializer_sizes(data).get(onnx.TensorProto.UINT8, 0) >= _weights("lenet300")
    _assert_matches(small, data)


def test_a_layer_without_a_compact_form_is_dense_with_its_reason(tmp_path: Path) -> None:
    sample = torch.rand(4, 1, 28, 28)
    small = _lenet300([{"method": "magnitude_prune", "sparsity": 0.8}], sample)
    result = export_onnx(small, tmp_path / "m.onnx", sample)
    dense = result.dense_layers()
    assert set(dense) == {"fc1", "fc2", "fc3"}
    assert all("no sparse weight type" in why for why in dense.values()), dense
    assert result.to_dict()["layers"] == result.layers  # the reasons reach --json


@pytest.mark.parametrize(
    "step",
    [
        {"method": "quantize_weights", "bits": 4, "granularity": "group", "group_size": 64},
        {"method": "quantize_weights", "bits": 2, "levels": "log2", "granularity": "tensor"},
    ],
    ids=["group4", "log2_tensor"],
)
def test_coded_convolutions_keep_their_codes(step: dict) -> None:
    # LeNet-5's conv2 rows hold 500 weights: groups of 64 pad each channel's last group.
    sample = torch.rand(4, 1, 28, 28)
    torch.manual_seed(0)
    small, _ = compress(
        create("lenet5").eval(), Recipe.from_list([step]), sample=sample, evaluate=False,
        measure=False,
    )  # fmt: skip
    forms: dict[str, str] = {}
    data = to_onnx_bytes(small.eval(), sample, forms=forms)
    assert {"conv1", "conv2"} <= set(forms) and not any("dense" in f for f in forms.values())
    sizes = _initializer_sizes(data)
    narrow = onnx.TensorProto.UINT4 if step["bits"] == 4 else onnx.TensorProto.UINT2
    assert sizes.get(narrow, 0) >= _weights("lenet5")
    assert sizes.get(_FLOAT, 0) < 0.05 * _weights("lenet5")
    assert "Conv" in {n.op_type for n in onnx.load_from_string(data).graph.node}
    _assert_matches(small.eval(), data)
