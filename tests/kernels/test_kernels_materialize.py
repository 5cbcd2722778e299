"""Executable layers equal their dense forms; materialize() replaces, checks and reports."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from modelzip.core.forms import candidates
from modelzip.deploy import TOLERANCE
from modelzip.kernels import materialize
from modelzip.kernels.int8 import Int8DynamicConv2d
from modelzip.kernels.layers import BinaryConv2d, BinaryLinear, binary_scales
from modelzip.kernels.sparse_layers import SparseConv2d, SparseLinear
from modelzip.prune.masked import MaskedConv2d, MaskedLinear
from modelzip.quantize.int8 import Int8Conv2d, Int8Linear
from modelzip.quantize.int8_method import Int8Config


class Sign(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 0, -1.0, 1.0)


def binarize_(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        alpha = w.abs().mean(dim=1, keepdim=True)
        layer.weight.copy_((torch.where(w < 0, -1.0, 1.0) * alpha).reshape(layer.weight.shape))
    return layer


def rebuilt(layer: nn.Module) -> nn.Module:
    new = type(layer).from_spec(layer.spec())
    new.load_packed_state(layer.packed_state())
    return new


@pytest.mark.parametrize("mode", ["xnor", "bwn"])
def test_binary_layers_equal_dense(mode: str) -> None:
    torch.manual_seed(0)
    lin = binarize_(nn.Linear(67, 13))
    conv = binarize_(nn.Conv2d(3, 5, 3, stride=2, padding=1))
    assert binary_scales(lin.weight) is not None
    assert binary_scales(nn.Linear(4, 3).weight) is None
    x, xc = torch.randn(6, 67), torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        for cls, dense, inp in ((BinaryLinear, lin, x), (BinaryConv2d, conv, xc)):
            layer = cls.from_dense(dense, mode)
            torch.testing.assert_close(layer(inp), layer.to_dense()(inp), rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(rebuilt(layer)(inp), layer(inp))
            if mode == "bwn":
                torch.testing.assert_close(layer(inp), dense(inp), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("block", [1, 4])
def test_sparse_layers_equal_dense(block: int) -> None:
    torch.manual_seed(0)
    lin, conv = (
        MaskedLinear.from_dense(nn.Linear(37, 19)),
        MaskedConv2d.from_dense(nn.Conv2d(4, 8, 3, padding=1)),
    )
    for layer in (lin, conv):
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        keep = torch.rand(-(-w.shape[0] // block), -(-w.shape[1] // block)) < 0.2
        mask = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
        layer.set_mask(mask[: w.shape[0], : w.shape[1]].reshape(layer.weight.shape))
    with torch.no_grad():
        for cls, layer, inp in ((SparseLinear, lin, torch.randn(5, 37)),
                                (SparseConv2d, conv, torch.randn(2, 4, 7, 6))):  # fmt: skip
            sparse = cls.from_dense(layer, block)
            torch.testing.assert_close(sparse(inp), layer(inp), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(rebuilt(sparse)(inp), layer(inp), rtol=1e-5, atol=1e-5)


def test_int8_conv_kernel() -> None:
    torch.manual_seed(0)
    q = Int8Conv2d.from_dense(nn.Conv2d(3, 6, 3, padding=1), Int8Config())
    layer = Int8DynamicConv2d.from_dense(q)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = q(x)
        assert float((layer(x) - ref).abs().max()) < 0.05 * float(ref.abs().max())
        torch.testing.assert_close(rebuilt(layer)(x), layer(x))


def model_under_test() -> nn.Sequential:
    torch.manual_seed(0)
    masked = MaskedLinear.from_dense(nn.Linear(256, 128))
    masked.set_mask(torch.rand(128, 256) > 0.95)
    return nn.Sequential(
        masked,
        Sign(),
        binarize_(nn.Linear(128, 64)),
        nn.ReLU(),
        binarize_(nn.Linear(64, 33)),
        Int8Linear.from_dense(nn.Linear(33, 10), Int8Config(activations="float")),
        nn.Linear(10, 4),
    )


def test_materialize_replaces_checks_and_reports() -> None:
    model = model_under_test()
    x = torch.randn(16, 256)
    new, report = materialize(model, x, reps=2, choose="compressed")
    assert isinstance(model[2], nn.Linear)  # the input model is left alone
    rows = {r.name: r for r in report.layers}
    assert set(rows) == {"0", "2", "4", "5", "6"}
    assert isinstance(new[0], SparseLinear) and rows["0"].kernel == "CSR"
    assert isinstance(new[2], BinaryLinear) and new[2].mode == "xnor"
    assert rows["2"].kernel == "XNOR-popcount" and rows["2"].max_rel_error < 1e-5
    assert isinstance(new[4], BinaryLinear) and new[4].mode == "bwn"  # inputs are not ±1
    # fbgemm's dynamic kernel or the same codes on onnxruntime's, whichever measured faster
    assert rows["5"].kernel in ("x86 linear_dynamic", "onnxruntime linear_dynamic")
    assert new[5].activations == "dynamic"
    assert rows["6"].after == "Linear" and "not ±α" in rows["6"].reason
    assert report.max_rel_error is not None and report.max_rel_error < 0.05
    assert "model output" in str(report) and len(report.rows()) == 5
    measured, report = materialize(model, x, reps=2)
    for row in report.layers:
        assert row.reason  # each layer says why it was (not) replaced
    torch.testing.assert_close(
        measured(x), new(x), rtol=0.05, atol=0.05 * float(new(x).abs().max())
    )


def test_materialize_reverts_a_wrong_kernel() -> None:
    model = model_under_test()
    x = torch.randn(4, 256)
    tolerance = sys.modules["modelzip.deploy"].TOLERANCE
    old = tolerance["int8"]
    tolerance["int8"] = 0.0  # the dynamic int8 kernel now counts as disagreeing
    try:
        new, report = materialize(model, x, reps=1, choose="compressed")
    finally:
        tolerance["int8"] = old
    assert isinstance(new[5], Int8Linear) and new[5].activations == "float"
    assert "disagrees" in report.layers[3].reason


def test_materialize_without_sample_takes_kernels() -> None:
    new, report = materialize(model_under_test())
    assert isinstance(new[0], SparseLinear) and isinstance(new[2], BinaryLinear)
    assert all(r.max_rel_error is None for r in report.layers)


def test_materialized_model_saves_and_loads(tmp_path: object) -> None:
    import modelzip
    from modelzip.models import create

    torch.manual_seed(0)
    model = create("lenet5")
    _ = [binarize_(model.conv2), binarize_(model.fc1)]
    model.fc2 = Int8Linear.from_dense(model.fc2, Int8Config(activations="float"))
    x = torch.randn(3, 1, 28, 28)
    new, _ = materialize(model, x, reps=1, choose="compressed")
    assert isinstance(new.conv2, BinaryConv2d) and new.conv2.mode == "bwn"
    path = modelzip.save(new, tmp_path / "m.mzip")  # type: ignore[operator]
    loaded = modelzip.load(path)
    assert isinstance(loaded.conv2, BinaryConv2d) and isinstance(loaded.fc1, BinaryLinear)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), new(x))


def test_materialize_chooses_the_memory_layout(tmp_path: object) -> None:
    import modelzip
    from modelzip.models import create

    torch.manual_seed(0)
    model = create("lenet5").eval()
    x = torch.randn(8, 1, 28, 28)
    forced, report = materialize(model, x, reps=1, layout="channels_last")
    assert report.layout == "channels_last"
    assert forced.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv1.weight.is_contiguous()  # the caller's model keeps its layout
    with torch.no_grad():
        torch.testing.assert_close(forced(x), model(x), rtol=1e-4, atol=1e-5)
    path = modelzip.save(forced, tmp_path / "cl.mzip")  # type: ignore[operator]
    with torch.no_grad():
        torch.testing.assert_close(modelzip.load(path)(x), model(x), rtol=1e-4, atol=1e-5)
    measured, report = materialize(model, x, reps=1)
    assert report.layout in ("contiguous", "channels_last") and "measured" in report.layout_reason
    assert "memory layout" in str(report)
    with torch.no_grad():
        torch.testing.assert_close(measured(x), model(x), rtol=1e-4, atol=1e-5)
    _, report = materialize(model, None)
    assert report.layout == "contiguous" and "no sample" in report.layout_reason
    _, report = materialize(nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4), reps=1)
    assert report.layout_reason == "no 4-D weights"
    with pytest.raises(ValueError, match="layout='nhwc' is not allowed"):
        materialize(model, x, layout="nhwc")  # type: ignore[arg-type]


def _compressed(model_name: str, method: str) -> tuple[nn.Module, torch.Tensor]:
    import modelzip
    from modelzip.core.registry import get_method
    from modelzip.models import create

    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    small, _ = modelzip.compress(
        create(model_name).eval(), get_method(method).example, sample=x, measure=False, deploy=False
    )
    return small, x


# Their layers have ``codes`` and ``scale`` but are not int8 (issue 19): once taken for int8 by
# attribute names, and materialize crashed (KeyError 'bias', or None.numel()).
NOT_INT8 = ["quantize_weights", "binary", "ternary", "multibit", "sparse_quantize"]


@pytest.mark.parametrize("model_name", ["lenet5", "lenet300"])
@pytest.mark.parametrize("method", NOT_INT8)
def test_materialize_keeps_k_bit_layers_with_codes_and_scale(model_name: str, method: str) -> None:
    small, x = _compressed(model_name, method)
    kept = {n: m for n, m in small.named_modules() if hasattr(m, "codes") and hasattr(m, "scale")}
    assert kept, f"{method}'s example made no layer with codes and scale"
    for choose in ("compressed", "measured"):
        new, report = materialize(small, x, reps=1, choose=choose)  # type: ignore[arg-type]
        forms = {entry.name: entry.form for entry in report.layers}
        for name, layer in kept.items():
            # Unchanged, or turned into one of the forms its class declares (k-bit codes on an
            # int8 grid run on the int8 kernels), never taken for int8 by its attribute names.
            kind = forms[name]
            assert kind == "" or any(kind == k for k, _ in candidates(layer, None)), (
                f"{name}: {kind!r}"
            )
            if kind == "":
                assert type(new.get_submodule(name)) is type(layer), name
        integer = any(kind.startswith("int8:") for kind in forms.values())
        # Each int8 layer is checked against its own tolerance; through a few layers the input
        # rounding of each adds up.
        tolerance = 2 * TOLERANCE["int8"] if integer else 1e-4
        assert report.max_rel_error is not None and report.max_rel_error < tolerance


def test_materialize_every_method_keeps_outputs(model_for_method: object) -> None:
    """Over the registry: each method's result materializes to a model that computes the same,
    every layer either replaced by a form checked equal or left unchanged."""
    import modelzip
    from modelzip.core.registry import get_method, list_methods

    tolerance = sys.modules["modelzip.deploy"].TOLERANCE
    failures = []
    for method in list_methods():
        model, x = model_for_method(method)  # type: ignore[operator]
        small, _ = modelzip.compress(model, get_method(method).example, sample=x, measure=False)
        try:
            new, report = materialize(small, x, reps=1, choose="compressed")
        except Exception as e:  # collected, so that one run names every failing method
            failures.append(f"{method}: {type(e).__name__}: {e}")
            continue
        modules = dict(small.named_modules())
        int8 = 0  # layers on int8 kernels: each may add its activation rounding error
        for row in report.layers:
            if row.kernel == "unchanged":
                assert type(new.get_submodule(row.name)) is type(modules[row.name]), (method, row)
                continue
            # A form's kind names the tolerance it is checked with ("int8:…", "float:…").
            kind = "int8" if row.form.startswith("int8:") else "float"
            int8 += kind == "int8"
            assert row.max_rel_error is not None, (method, row)
            assert row.max_rel_error <= tolerance[kind], (method, row)
        with torch.no_grad():
            ref, out = small(x), new(x)
        scale = float(ref.abs().max()) or 1.0
        err = float((out - ref).abs().max()) / scale
        if err > (tolerance["int8"] * int8 if int8 else tolerance["float"]):
            failures.append(f"{method}: output rel. error {err:.1e}")
    assert not failures, "\n".join(failures)
