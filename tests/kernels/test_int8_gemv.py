"""The few-row dynamic int8 linear on the native kernel (``native/int8_gemv.h``,
:mod:`modelzip.kernels.int8_gemv`): its outputs against the exact integer product on its grid,
on both products (VPDPBUSD on 8-bit inputs, VPMADDUBSW on 7-bit ones), odd shapes, NaN and
constant inputs; more rows on fbgemm; the deploy form chosen, saved and loaded, and loaded where
the native kernels are absent."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import modelzip
from modelzip.core.forms import build_form, candidates
from modelzip.kernels import int8_gemv as gemv
from modelzip.kernels._native import cpu_flags, native
from modelzip.kernels.int8 import ENGINE_ATTR, linear_dynamic, prepack_linear
from modelzip.models import create
from modelzip.quantize.int8 import Int8Linear
from modelzip.quantize.int8_method import Int8Config

NATIVE = native()
needs_native = pytest.mark.skipif(NATIVE is None, reason="no native build runs on this CPU")
KIND = "int8:native linear_dynamic"


def _grid_top(path: int) -> int:
    """The input grid's top code: 8 bits where the kernel takes VPDPBUSD, else 7."""
    vnni = (
        path == 0 and "avx512_vnni" in cpu_flags() and NATIVE.__name__.startswith("modelzip_avx512")
    )
    return 255 if vnni else 127


def _reference(x, codes, scale, bias, qmax):
    """The product on the input's grid (range widened to hold 0, ``qmax`` steps), in float64."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s = (hi - lo) / qmax if hi > lo else 1.0
    z = int(min(max(round(-lo / s), 0), qmax))
    q = torch.clamp(torch.round(x.double() / s) + z, 0, qmax)
    y = ((q - z) @ codes.double().t()) * s * scale.double()
    return y if bias is None else y + bias.double()


@needs_native
@pytest.mark.parametrize("path", [0, 1])
@pytest.mark.parametrize(("rows", "out_f", "in_f"), [(1, 100, 37), (3, 130, 64), (5, 64, 1027),
                                                     (8, 257, 300), (1, 1, 4), (13, 70, 45),
                                                     (64, 129, 260), (131, 16, 33)])  # fmt: skip
def test_outputs_are_the_integer_product_on_the_grid(monkeypatch, path, rows, out_f, in_f):
    """Integer products summed exactly: only the float rescale differs from the reference
    (partial blocks of outputs, inputs not a multiple of 4, tiles of every row count and many
    of them: the kernel runs here whatever rows the engine would send to fbgemm)."""
    monkeypatch.setattr(gemv, "PATH", path)
    monkeypatch.setattr(gemv, "row_limit", lambda: None)
    g = torch.Generator().manual_seed(rows * 1000 + out_f)
    codes = torch.randint(-128, 128, (out_f, in_f), dtype=torch.int8, generator=g)
    scale = torch.rand(out_f, generator=g) * 0.01 + 1e-3
    bias = torch.randn(out_f, generator=g)
    x = torch.randn(rows, in_f, generator=g) * 3
    got = gemv.NativeGemvLinear(codes, scale, bias)(x)
    ref = _reference(x, codes, scale, bias, _grid_top(path))
    assert got.dtype == torch.float32 and got.shape == (rows, out_f)
    assert float((got.double() - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@needs_native
def test_nan_constant_and_per_tensor_inputs():
    codes = torch.randint(
        -127, 128, (16, 24), dtype=torch.int8, generator=torch.Generator().manual_seed(2)
    )
    run = gemv.NativeGemvLinear(codes, torch.full((1,), 0.02), None)  # one scale, no bias
    assert torch.equal(run(torch.zeros(2, 24)), torch.zeros(2, 16))  # zeros, not NaN
    x = torch.full((1, 24), 0.5)
    ref = _reference(x, codes, torch.full((16,), 0.02), None, _grid_top(0))
    assert torch.allclose(run(x).double(), ref, rtol=1e-5, atol=1e-6)
    nan = x.clone()
    nan[0, 3] = float("nan")  # read as 0
    zeroed = x.clone()
    zeroed[0, 3] = 0.0
    assert torch.equal(run(nan), run(zeroed))
    with pytest.raises(RuntimeError, match="features"):
        run(torch.zeros(1, 40))
    assert run(torch.zeros(0, 24)).shape == (0, 16)  # an empty batch


@needs_native
@pytest.mark.parametrize("path", [0, 1])
def test_nan_read_as_zero_in_vector_and_tail_positions(monkeypatch, path):
    """The input's range and codes are made 16 (AVX-512) or 32 (AVX2) values at a time, the
    rest one by one: a NaN anywhere is skipped by the range and coded as 0."""
    monkeypatch.setattr(gemv, "PATH", path)
    monkeypatch.setattr(gemv, "row_limit", lambda: None)
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(-127, 128, (40, 100), dtype=torch.int8, generator=g)
    run = gemv.NativeGemvLinear(codes, torch.rand(40, generator=g) * 0.01, None)
    x = torch.randn(7, 100, generator=g)
    nan, zeroed = x.clone(), x.clone()
    for r, c in ((0, 3), (2, 17), (3, 40), (6, 99), (5, 31), (5, 32)):
        nan[r, c], zeroed[r, c] = float("nan"), 0.0
    got = run(nan)
    assert not got.isnan().any() and torch.equal(got, run(zeroed))


def test_row_limit_follows_the_product(monkeypatch):
    """Any number of rows where the AVX-512 build computes with VNNI; the measured limits
    elsewhere (VPMADDUBSW, the AVX2 build); none without a native build."""
    monkeypatch.setattr(gemv, "selected_isa", lambda: "avx512")
    monkeypatch.setattr(gemv, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    assert gemv.row_limit() is gemv.MAX_ROWS["vnni"] is None
    monkeypatch.setattr(gemv, "PATH", 1)
    assert gemv.row_limit() == gemv.MAX_ROWS["avx512"]
    monkeypatch.setattr(gemv, "PATH", 0)
    monkeypatch.setattr(gemv, "cpu_flags", lambda: frozenset())
    assert gemv.row_limit() == gemv.MAX_ROWS["avx512"]
    monkeypatch.setattr(gemv, "selected_isa", lambda: "avx2")
    assert gemv.row_limit() == gemv.MAX_ROWS["avx2"]
    monkeypatch.setattr(gemv, "selected_isa", lambda: None)
    assert gemv.row_limit() == 0


def test_more_rows_run_on_fbgemm_and_copies_carry_the_codes(monkeypatch):
    """Past the row limit, or where the native kernels are absent, fbgemm's kernel runs: the same
    outputs as its linear_dynamic. A copy or pickle packs again on first use."""
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-127, 128, (20, 48), dtype=torch.int8, generator=g)
    scale, bias = torch.rand(20, generator=g) + 0.1, torch.randn(20, generator=g)
    monkeypatch.setattr(gemv, "row_limit", lambda: 2)
    run = gemv.NativeGemvLinear(codes, scale, bias)
    fbgemm = prepack_linear(codes, scale, bias)
    many = torch.randn(3, 48, generator=g)
    assert torch.equal(run(many), linear_dynamic(many, fbgemm))
    few = many[:2]
    monkeypatch.setattr(gemv, "native", lambda: None)
    assert torch.equal(run(few), linear_dynamic(few, fbgemm))
    monkeypatch.undo()
    y = run(few)
    for other in (copy.deepcopy(run), pickle.loads(pickle.dumps(run))):
        assert other._packed is None
        assert torch.equal(other(few), y)


def _int8_lenet300(x: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = modelzip.compress(create("lenet300").eval(), Int8Config(activations="dynamic"),
                                 sample=x, deploy=False, measure=False, evaluate=False)  # fmt: skip
    return model


@needs_native
def test_form_offered_chosen_when_faster_and_loaded_as_chosen(fake_deploy_clock, tmp_path):
    """Offered beside fbgemm's; measured faster (a fake clock), chosen for every int8 linear,
    saved by name and built again on load with the same outputs, also where the native kernels
    are absent (then on fbgemm)."""
    from modelzip.deploy import materialize

    x = torch.rand(1, 1, 28, 28)
    model = _int8_lenet300(x)
    assert KIND in [k for k, _ in candidates(model.fc2, torch.rand(1, 300))]
    fake_deploy_clock(
        lambda c: (
            type(c) is torch.nn.Linear
            or (isinstance(c, Int8Linear) and c.__dict__.get(ENGINE_ATTR) != gemv.ENGINE)
        )
    )
    fast, report = materialize(model, x)
    forms = {r["name"]: r["form"] for r in report.rows()}
    assert set(forms.values()) == {KIND}
    path = modelzip.save(fast, tmp_path / "f.mzip")
    loaded = modelzip.load(path)
    for name in forms:
        assert loaded.get_submodule(name).__dict__.get(ENGINE_ATTR) == gemv.ENGINE
    with torch.no_grad():
        assert torch.equal(loaded(x), fast(x))


def test_a_saved_choice_builds_without_the_native_kernels(monkeypatch):
    """Not offered for measuring where the native kernels are absent; a saved choice is still
    built by name, and runs on fbgemm."""
    monkeypatch.setattr(gemv, "native", lambda: None)
    x = torch.rand(2, 1, 28, 28)
    fc2 = _int8_lenet300(x).fc2
    h = torch.relu(torch.randn(2, 300))
    assert KIND not in [k for k, _ in candidates(fc2, h)]
    new = build_form(fc2, KIND)
    assert new.__dict__[ENGINE_ATTR] == gemv.ENGINE
    ref = build_form(fc2, "int8:x86 linear_dynamic")
    with torch.no_grad():
        assert torch.equal(new(h), ref(h))
