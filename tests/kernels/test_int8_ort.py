"""The dynamic int8 linear on onnxruntime's int8 GEMM: the same outputs as fbgemm's form, chosen
where measured faster, rebuilt so on load, copied and pickled without its session."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import modelzip
from modelzip.core.forms import candidates
from modelzip.kernels.int8 import ENGINE_ATTR
from modelzip.kernels.int8_ort import ORT_ENGINE, OrtDynamicLinear, input_grid, ort_available
from modelzip.models import create
from modelzip.quantize.int8 import Int8Linear
from modelzip.quantize.int8_method import Int8Config

pytestmark = pytest.mark.skipif(not ort_available(), reason="onnx/onnxruntime not installed")

ORT_KIND = "int8:onnxruntime linear_dynamic"


def _int8_lenet300(x: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = modelzip.compress(create("lenet300").eval(), Int8Config(activations="dynamic"),
                                 sample=x, deploy=False, measure=False, evaluate=False)  # fmt: skip
    return model


def _reference(layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """The product on the layer's dequantized weight and the 7-bit input grid, in float64."""
    scale, zero = input_grid(x)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 127)
    xq = ((q - zero) * scale).double()
    return (xq @ layer.dequantized_weight().double().t() + layer.bias.double()).float()


def test_ort_form_matches_fbgemm_form_and_the_integer_reference() -> None:
    x = torch.rand(16, 1, 28, 28)
    fc2 = _int8_lenet300(x).fc2
    h = torch.relu(torch.randn(16, 300)) * 3
    kinds = {k: b for k, b in candidates(fc2, h)}
    assert [k for k in kinds if k != "int8:native linear_dynamic"] == [
        "int8:x86 linear_dynamic",
        ORT_KIND,
    ]
    x86, ort = kinds["int8:x86 linear_dynamic"](), kinds[ORT_KIND]()
    assert ort.__dict__[ENGINE_ATTR] == ORT_ENGINE and ENGINE_ATTR not in x86.__dict__
    with torch.no_grad():
        got, ref, fbgemm = ort(h), _reference(fc2, h), x86(h)
    top = float(ref.abs().max())
    # Integer products summed exactly: only the float rescale differs from the reference.
    assert float((got - ref).abs().max()) <= 1e-5 * top
    # fbgemm nudges its zero point slightly differently: within one input step of the weights.
    assert float((got - fbgemm).abs().max()) <= 0.02 * top
    # A batch of one (on its own grid) and a 3-d input go the same way.
    with torch.no_grad():
        one = _reference(fc2, h[:1])
        assert float((ort(h[:1]) - one).abs().max()) <= 1e-5 * float(one.abs().max())
        assert torch.equal(ort(h.reshape(4, 4, 300)), got.reshape(4, 4, 100))


def test_ort_layer_copies_pickles_and_follows_the_thread_count() -> None:
    torch.manual_seed(1)
    codes = torch.randint(-127, 128, (8, 32), dtype=torch.int8)
    run = OrtDynamicLinear(codes, torch.rand(8) + 0.1, torch.randn(8))
    x = torch.randn(5, 32)
    y = run(x)
    for other in (copy.deepcopy(run), pickle.loads(pickle.dumps(run))):
        assert other._session is None  # the weights travel, the session is built anew
        assert torch.equal(other(x), y)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if before != 1 else 2)
        assert torch.equal(run(x), y) and run._threads == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    # No bias, an all-zero input: zeros, not NaN.
    bare = OrtDynamicLinear(codes, torch.ones(1), None)
    assert torch.equal(bare(torch.zeros(2, 32)), torch.zeros(2, 8))


def test_ort_form_chosen_when_faster_and_loaded_as_chosen(fake_deploy_clock, tmp_path) -> None:
    """Measured faster (a fake clock: fbgemm's int8 layers and float layers slow), the form is
    chosen, saved by name, and built again on load with the same outputs."""
    from modelzip.deploy import materialize

    x = torch.rand(16, 1, 28, 28)
    model = _int8_lenet300(x)
    fake_deploy_clock(
        lambda c: (
            type(c) is torch.nn.Linear
            or (isinstance(c, Int8Linear) and c.__dict__.get(ENGINE_ATTR) != ORT_ENGINE)
        )
    )
    fast, report = materialize(model, x)
    forms = {r["name"]: r["form"] for r in report.rows()}
    assert set(forms.values()) == {ORT_KIND}
    loaded = modelzip.load(modelzip.save(fast, tmp_path / "f.mzip"))
    for name in forms:
        assert loaded.get_submodule(name).__dict__.get(ENGINE_ATTR) == ORT_ENGINE
    with torch.no_grad():
        assert torch.equal(loaded(x), fast(x))


def test_k_bit_codes_offer_the_ort_engine_too() -> None:
    """A k-bit layer's codes expanded once to int8 run on either engine, with the same outputs,
    and the form is built again by name (as on load)."""
    from modelzip.core.forms import build_form
    from modelzip.quantize import QuantizeWeightsConfig

    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    model, _ = modelzip.compress(create("lenet300").eval(), QuantizeWeightsConfig(bits=4),
                                 sample=x, deploy=False, measure=False, evaluate=False)  # fmt: skip
    fc2, h = model.fc2, torch.relu(torch.randn(16, 300))
    kinds = dict(candidates(fc2, h))
    kind = ORT_KIND + " (codes once)"
    assert "int8:x86 linear_dynamic (codes once)" in kinds and kind in kinds
    x86, ort = kinds["int8:x86 linear_dynamic (codes once)"](), build_form(fc2, kind)
    assert ort.__dict__[ENGINE_ATTR] == ORT_ENGINE
    with torch.no_grad():
        ref, got = x86(h), ort(h)
    assert float((got - ref).abs().max()) <= 0.02 * float(ref.abs().max())
