"""The static int8 linear on the native kernel (``int8_gemm_static`` in ``native/int8_gemv.h``,
:mod:`modelzip.kernels.int8_static_gemm`): its codes against fbgemm's ``quantized::linear`` and
``linear_relu`` on the same grids, quint8 and float inputs, odd shapes; PyTorch's engine where
the kernel does not run; the deploy form chosen, chained, saved and loaded."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.forms import build_form, candidates
from modelzip.kernels import int8_static_gemm as gemm
from modelzip.kernels.int8 import EMIT_ATTR, ENGINE_ATTR, RELU_ATTR, prepack_linear
from modelzip.models import create
from modelzip.quantize.int8_method import Int8Config
from modelzip.quantize.static_int8 import StaticInt8Linear

needs_kernel = pytest.mark.skipif(
    not gemm.available(), reason="the static int8 GEMM needs the AVX-512 build with VNNI"
)
KIND = "int8:static native"


def _quint8(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(x, scale, zero, torch.quint8)


def _layer(out_f: int, in_f: int, seed: int, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (out_f, in_f), dtype=torch.int8, generator=g)
    scale = torch.rand(out_f, generator=g) * 0.01 + 1e-3
    b = torch.randn(out_f, generator=g) if bias else None
    return codes, scale, b, gemm.prepack(codes, scale, b, lambda: prepack_linear(codes, scale, b))


def _codes_differ(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.int_repr().int() - b.int_repr().int()).abs().max())


@needs_kernel
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("rows", "out_f", "in_f"), [(1, 100, 37), (6, 64, 64), (13, 70, 45),
                                                     (64, 129, 260), (131, 16, 33)])  # fmt: skip
def test_codes_are_fbgemms_on_the_same_grids(relu, rows, out_f, in_f):
    """Quint8 in, quint8 out on the requested grid: fbgemm's codes (at most one apart, on a
    rounding tie), the ReLU's clamp at the output's zero point."""
    _, _, _, packed = _layer(out_f, in_f, rows + out_f)
    x = torch.randn(rows, in_f, generator=torch.Generator().manual_seed(rows)) * 2
    qx = _quint8(x, 0.03, 117)
    op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
    ref = op(qx, packed.make_fallback(), 0.05, 101)
    got = gemm.linear_op(qx, packed, 0.05, 101, relu=relu)
    assert got.is_quantized and got.shape == (rows, out_f)
    assert (got.q_scale(), got.q_zero_point()) == (0.05, 101)
    assert _codes_differ(got, ref) <= 1
    if relu:
        assert int(got.int_repr().min()) >= 101


@needs_kernel
@pytest.mark.parametrize("qmax", [255, 127])
def test_a_float_input_is_quantized_on_its_grid_in_the_kernel(qmax):
    """A float input and its grid ``(scale, zero, top code)``: the codes of quantizing it
    first (clamped at the top code) and running the quint8 path; NaN-free inputs only here."""
    _, _, _, packed = _layer(40, 52, 7)
    x = torch.randn(9, 52, generator=torch.Generator().manual_seed(9)) * 3
    qx = _quint8(x, 0.04, 60)
    if qmax != 255:
        qx = torch.clamp(qx, max=(qmax - 60) * 0.04)
    got = gemm.linear_op(x, packed, 0.1, 20, in_grid=(0.04, 60, qmax))
    assert _codes_differ(got, gemm.linear_op(qx, packed, 0.1, 20)) == 0
    with pytest.raises(ValueError, match="input grid"):
        gemm.linear_op(x, packed, 0.1, 20)
    empty = gemm.linear_op(x[:0], packed, 0.1, 20, in_grid=(0.04, 60, qmax))
    assert empty.shape == (0, 40) and empty.is_quantized


def test_where_the_kernel_does_not_run_pytorchs_engine_does(monkeypatch):
    """Without the kernel (no VNNI, no native build) both inputs run fbgemm's op: the same
    codes as calling it directly."""
    monkeypatch.setattr(gemm, "available", lambda: False)
    _, _, _, packed = _layer(24, 40, 3, bias=False)
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(5))
    qx = _quint8(x, 0.02, 128)
    ref = torch.ops.quantized.linear_relu(qx, packed.make_fallback(), 0.07, 30)
    assert _codes_differ(gemm.linear_op(qx, packed, 0.07, 30, relu=True), ref) == 0
    from_float = gemm.linear_relu_op(x, packed, 0.07, 30, in_grid=(0.02, 128, 255))
    assert _codes_differ(from_float, ref) == 0


@needs_kernel
def test_copies_and_pickles_pack_again():
    codes, scale, bias, packed = _layer(20, 48, 4)
    qx = _quint8(torch.randn(3, 48), 0.05, 128)
    y = gemm.linear_op(qx, packed, 0.1, 128)
    assert packed._packed is not None
    plain = gemm.prepack(codes, scale, bias)  # no fallback maker: picklable
    gemm.linear_op(qx, plain, 0.1, 128)
    for other in (copy.deepcopy(packed), pickle.loads(pickle.dumps(plain))):
        assert other._packed is None
        assert _codes_differ(gemm.linear_op(qx, other, 0.1, 128), y) == 0


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return create("lenet300").eval()  # flatten, 784-300-100-10 with ReLUs


def _static(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    out, _ = modelzip.compress(model, Int8Config(activations="static"), sample=calib,
                               deploy=False, measure=False, evaluate=False)  # fmt: skip
    return out


@needs_kernel
def test_form_chosen_when_faster_chained_saved_and_loaded(fake_deploy_clock, tmp_path):
    """Offered beside the engine's; measured faster (a fake clock), chosen for every static
    linear, chained (uint8 between layers, the ReLUs in the requantization), saved by name and
    built again on load with the same outputs."""
    from modelzip.deploy import materialize

    calib = torch.rand(128, 1, 28, 28)
    model = _static(_mlp(), calib)
    assert KIND in [k for k, _ in candidates(model.fc2, torch.rand(4, 300))]
    fake_deploy_clock(
        lambda c: isinstance(c, StaticInt8Linear) and c.__dict__.get(ENGINE_ATTR) != gemm.ENGINE
    )
    fast, report = materialize(model, calib[:32])
    forms = {r["name"]: r["form"] for r in report.rows()}
    assert set(forms.values()) == {KIND}
    layers = [fast.get_submodule(n) for n in forms]
    assert all(m.__dict__.get(EMIT_ATTR) for m in layers[:2])  # uint8 handed on
    assert all(m.__dict__.get(RELU_ATTR) for m in layers[:2])  # ReLUs fused
    with torch.no_grad():
        ref = _mlp()(calib[:32])
        got = fast(calib[:32])
    assert float((got - ref).abs().max()) <= 0.05 * float(ref.abs().max())
    loaded = modelzip.load(modelzip.save(fast, tmp_path / "f.mzip"))
    for name in forms:
        assert loaded.get_submodule(name).__dict__.get(ENGINE_ATTR) == gemm.ENGINE
    with torch.no_grad():
        assert torch.equal(loaded(calib[:32]), got)


def test_not_offered_without_the_kernel_but_built_by_name(monkeypatch):
    """Not offered for measuring where the kernel does not run; a saved choice is still built
    by name and runs on PyTorch's engine, with the engine's outputs."""
    monkeypatch.setattr(gemm, "available", lambda: False)
    calib = torch.rand(64, 1, 28, 28)
    layer = _static(_mlp(), calib).fc2
    h = torch.relu(torch.randn(4, 300))
    assert KIND not in [k for k, _ in candidates(layer, h)]
    new = build_form(layer, KIND)
    assert new.__dict__[ENGINE_ATTR] == gemm.ENGINE
    with torch.no_grad():
        assert torch.equal(new(h), layer.with_activations("static")(h))
