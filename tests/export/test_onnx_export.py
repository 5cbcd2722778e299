"""ONNX export: compressed zoo models run in onnxruntime and match PyTorch."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from modelzip.api import compress
from modelzip.core.errors import ModelError
from modelzip.core.module import CompressedModule
from modelzip.core.registry import get_method, list_methods
from modelzip.deploy import trainable
from modelzip.export import export_onnx, export_path, run_onnx, to_onnx_bytes
from modelzip.kernels import isa
from modelzip.models import create
from modelzip.recipe import Recipe

torch.set_num_threads(1)


def _compressed(model: str, steps: list[dict], sample: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    small, _ = compress(
        create(model).eval(), Recipe.from_list(steps), sample=sample, evaluate=False, measure=False
    )
    return small.eval()


def _ops(data: bytes) -> set[str]:
    return {n.op_type for n in onnx.load_from_string(data).graph.node}


def _check_batches(small: nn.Module, data: bytes, atol: float) -> None:
    """The file matches PyTorch on batch sizes other than the traced one (symbolic batch)."""
    for batch in (5, 1):
        x = torch.rand(batch, 1, 28, 28)
        with torch.no_grad():
            ref = small(x)
        got = run_onnx(data, x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=atol, rtol=1e-4)


@pytest.mark.parametrize(
    ("model", "method", "node"),
    [
        ("lenet300", "svd", "MatMul"),
        ("lenet5", "svd", "Conv"),
        ("lenet5", "tucker2", "Conv"),
        ("lenet5", "cp", "Conv"),
        ("lenet300", "tt", "MatMul"),
        ("lenet5", "tt", "MatMul"),
        ("lenet300", "ht", "MatMul"),
    ],
)
def test_decomposed_models_export_as_small_ops(model: str, method: str, node: str) -> None:
    sample = torch.rand(4, 1, 28, 28)
    small = _compressed(model, [{"method": method}], sample)
    data = to_onnx_bytes(small, sample)
    ops = _ops(data)
    assert node in ops
    assert "Einsum" not in ops  # tensor networks are lowered to reshapes and matmuls
    _check_batches(small, data, atol=1e-5)
    # The factors travel, not the dense weight: the file is smaller than the dense model's.
    dense = to_onnx_bytes(create(model).eval(), sample)
    assert len(data) < len(dense)


def test_decomposed_conv_is_a_chain_of_convolutions() -> None:
    sample = torch.rand(2, 1, 28, 28)
    small = _compressed("lenet5", [{"method": "cp", "select": {"names": ["conv2"]}}], sample)
    convs = [n for n in onnx.load_from_string(to_onnx_bytes(small, sample)).graph.node]
    assert sum(n.op_type == "Conv" for n in convs) == 1 + 4  # conv1, then CP's four factors


@pytest.mark.parametrize(
    "steps",
    [
        [{"method": "magnitude_prune", "sparsity": 0.8}],
        [{"method": "channel_prune", "sparsity": 0.5}],
    ],
)
def test_pruned_models_round_trip(steps: list[dict]) -> None:
    sample = torch.rand(4, 1, 28, 28)
    small = _compressed("lenet5", steps, sample)
    data = to_onnx_bytes(small, sample)
    _check_batches(small, data, atol=1e-5)
    weights = {
        i.name: onnx.numpy_helper.to_array(i) for i in onnx.load_from_string(data).graph.initializer
    }
    if steps[0]["method"] == "magnitude_prune":  # masked weights keep their zeros
        conv2 = next(w for w in weights.values() if w.shape == (50, 20, 5, 5))
        assert (conv2 == 0).mean() == pytest.approx(0.8, abs=0.01)
    else:  # the smaller dense model: fewer output channels than LeNet-5's 20 and 50
        shapes = [w.shape for w in weights.values() if w.ndim == 4]
        assert shapes[0][0] < 20 and shapes[1][0] < 50


def _int8_initializer_bytes(data: bytes) -> int:
    return sum(
        onnx.numpy_helper.to_array(i).size
        for i in onnx.load_from_string(data).graph.initializer
        if i.data_type == onnx.TensorProto.INT8
    )


@pytest.mark.parametrize("activations", ["float", "dynamic", "static"])
def test_int8_models_are_int8_in_the_file(activations: str) -> None:
    model = "lenet300" if activations == "dynamic" else "lenet5"
    sample = torch.rand(16, 1, 28, 28)
    small = _compressed(model, [{"method": "int8", "activations": activations}], sample)
    data = to_onnx_bytes(small, sample)
    ops = _ops(data)
    weights = sum(p.numel() for n, p in create(model).named_parameters() if n.endswith("weight"))
    assert _int8_initializer_bytes(data) == weights  # every weight stored as one int8 byte
    # Where int8 products can saturate the dynamic input is quantized to 7 bits by plain ops.
    dynamic = "QuantizeLinear" if isa.reduced_int8_range() else "DynamicQuantizeLinear"
    expected = {
        "float": {"DequantizeLinear"},
        "dynamic": {dynamic, "MatMulInteger"},
        "static": {"QuantizeLinear", "DequantizeLinear"},
    }[activations]
    assert expected <= ops
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        # The file holds the compressed layers (a deployed float-activation int8 layer may run on
        # the dynamic int8 kernel instead): compare with them.
        ref = trainable(small)(x)
    got = run_onnx(data, x)
    # Activation rounding differs between the runtimes by a step or two of the int8 grid.
    tolerance = 1e-5 if activations == "float" else 0.05 * float(ref.abs().max())
    assert float((got - ref).abs().max()) <= tolerance


def test_static_int8_runs_on_integer_kernels_in_onnxruntime(tmp_path) -> None:
    sample = torch.rand(16, 1, 28, 28)
    small = _compressed("lenet5", [{"method": "int8", "activations": "static"}], sample)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(to_onnx_bytes(small, sample), options, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert {"QLinearConv", "QLinearMatMul", "QGemm"} & fused, fused


def _uint8_codes_multiplied(data: bytes, x: torch.Tensor) -> list[torch.Tensor]:
    """The uint8 activations the file's integer products read, on input ``x``: the input of
    each ``MatMulInteger`` and of each ``DequantizeLinear`` feeding a ``Conv``/``Gemm``."""
    model = onnx.load_from_string(data)
    graph = model.graph
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    weights = {i.name for i in graph.initializer}
    products = {"Conv", "Gemm", "MatMul"}
    names = []
    for node in graph.node:
        feeds_a_product = products & set(consumers.get(node.output[0], []))
        if node.op_type == "MatMulInteger" or (
            node.op_type == "DequantizeLinear" and node.input[0] not in weights and feeds_a_product
        ):
            names.append(node.input[0])
    assert names
    del graph.output[:]
    graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UINT8, None)
                        for n in names)  # fmt: skip
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    return [torch.from_numpy(a) for a in session.run(None, {"input": x.numpy()})]


@pytest.mark.parametrize("activations", ["dynamic", "static"])
def test_reduced_range_files_multiply_7_bit_activations(activations: str, monkeypatch) -> None:
    """Without VNNI, onnxruntime adds pairs of uint8 × int8 products into int16: the file then
    quantizes activations to 7 bits, even beyond the calibrated range, and still matches."""
    monkeypatch.setenv("MODELZIP_INT8_REDUCE_RANGE", "1")
    model = "lenet300" if activations == "dynamic" else "lenet5"
    sample = torch.rand(16, 1, 28, 28)
    small = _compressed(model, [{"method": "int8", "activations": activations}], sample)
    data = to_onnx_bytes(small, sample)
    assert "DynamicQuantizeLinear" not in _ops(data)
    x = 3 * torch.rand(8, 1, 28, 28)  # three times the calibrated range
    codes = _uint8_codes_multiplied(data, x)
    assert max(int(c.max()) for c in codes) <= 127
    # The file holds the layers as compressed: each rounds its output on its own grid (the
    # deployed model's int8 chain rounds once, onto the next layer's grid).
    unchained = trainable(small).eval()
    for batch in (x, torch.zeros(2, 1, 28, 28)):  # an all-zero input has no range to split
        with torch.no_grad():
            ref = unchained(batch)
        got = run_onnx(data, batch)
        # The same tolerance as with 8 bits (test_int8_models_are_int8_in_the_file).
        assert float((got - ref).abs().max()) <= 0.05 * float(ref.abs().max())


def test_export_onnx_writes_the_file_and_checks_it(tmp_path) -> None:
    sample = torch.rand(4, 1, 28, 28)
    small = _compressed("lenet300", [{"method": "svd"}], sample)
    result = export_onnx(small, tmp_path / "m.onnx", sample)
    assert (tmp_path / "m.onnx").stat().st_size == result.file_bytes
    assert result.max_abs_error is not None and result.max_abs_error < 1e-5
    assert "MatMul" in result.op_types
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_unexportable_layer_names_the_layer_and_why() -> None:
    model = create("char_lstm", vocab_size=20, embed_dim=8, hidden_size=16, num_layers=2).eval()
    sample = torch.randint(0, 20, (2, 12))
    small, _ = compress(
        model, Recipe.from_list([{"method": "rnn_lowrank"}]), sample=sample, measure=False
    )
    with pytest.raises(ModelError, match=r"layer 'lstm' \(DecomposedRNN\).*loop over time steps"):
        to_onnx_bytes(small, sample)


class _Unknown(CompressedModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_unknown_compressed_layer_is_refused_not_guessed() -> None:
    model = nn.Sequential(nn.Flatten(), _Unknown())
    assert export_path(model[1]).startswith("refused")
    with pytest.raises(ModelError, match=r"layer '1' \(_Unknown\).*no ONNX export path"):
        to_onnx_bytes(model, torch.rand(2, 3))


@pytest.mark.parametrize("method", list_methods())
def test_every_method_exports_or_says_why(method: str, model_for_method) -> None:
    model, sample = model_for_method(method)
    spec = get_method(method)
    small, _ = compress(model, spec.example, sample=sample, evaluate=False, measure=False)
    forms: dict[str, str] = {}
    try:
        data = to_onnx_bytes(small, sample, forms=forms)
    except ModelError as e:
        assert "cannot be exported" in str(e)
        return
    coded = {
        name
        for name, m in small.named_modules()
        if getattr(type(m), "onnx_export", "").startswith("converter:coded_")
    }
    # Layers that store codes keep them in the file; a float weight comes with its reason.
    for name, form in forms.items():
        if form.startswith("dense float"):
            assert name not in coded and len(form.removeprefix("dense float: ")) > 10, form
    if coded:
        narrow = {onnx.TensorProto.UINT2, onnx.TensorProto.UINT4, onnx.TensorProto.UINT8}
        codes = [i for i in onnx.load_from_string(data).graph.initializer if i.data_type in narrow]
        assert len(codes) >= len(coded), forms
    with torch.no_grad():
        ref = trainable(small).eval()(sample)  # the file holds the compressed layers
    ref = ref[0] if isinstance(ref, tuple) else ref
    got = run_onnx(data, sample)
    assert float((got - ref).abs().max()) <= 1e-4 + 0.05 * float(ref.abs().max())


def test_a_bare_compressed_layer_exports() -> None:
    from modelzip.decompose.tt import TTLinear

    layer = TTLinear.from_dense(nn.Linear(64, 32), ranks=[1, 4, 4, 1]).eval()
    x = torch.rand(3, 64)
    data = to_onnx_bytes(layer, x)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(data, x), layer(x), atol=1e-5, rtol=1e-4)
