"""One battery of contract checks run over every registered compressed-layer class.

As scikit-learn runs ``check_estimator`` over every estimator, every class in
:data:`modelzip.core.module._LAYERS` passes the same checks, on a real instance taken from the
golden files (:mod:`layer_instances`) and the input it saw there:

1. ``spec``/``packed_state`` round trip: rebuilt from JSON, every packed tensor is bit-exact and
   so is the forward;
2. the forward equals ``to_dense()``'s;
3. ``storage_bytes()`` is the bytes of ``packed_state()`` and the bytes :func:`modelzip.save`
   writes for the layer;
4. ``workloads`` are well formed;
5. :func:`~modelzip.deploy.materialize` keeps the output and says why per layer;
6. ONNX export either works and matches, or refuses with a reason.

The test list is parametrized over the registry, so a new class is checked the moment it
registers (and ``tests/test_golden.py`` makes sure it has an instance here). No check is skipped:
a class that differs from its dense or exported form by design (its activations are quantized)
gets a looser tolerance in a table below, with the reason written out, and the tables must name
registered classes, so they cannot outlive the class.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from layer_instances import LayerCase, first_tensor, import_all_layers, layer_cases
from safetensors import safe_open
from torch import nn

import modelzip
from modelzip.core.errors import ModelError
from modelzip.core.forms import candidates, declared_forms
from modelzip.core.module import CompressedModule
from modelzip.core.workload import Workload
from modelzip.deploy import TOLERANCE, materialize
from modelzip.export.convert import export_path, exportable
from modelzip.export.onnx import run_onnx, to_onnx_bytes

torch.set_num_threads(1)

KEYS = sorted(import_all_layers())

_INT8_RTOL = TOLERANCE["int8"]  # materialize's own bound for int8 kernels (8-bit activations)
_ACT_QUANT = "it quantizes its activations (uint8 codes, 7 or 8 bits used)"

#: Relative tolerance (to the output's largest magnitude) of "forward equals to_dense()'s".
DENSE_RTOL = 1e-4
#: Classes whose forward differs from their dense form by design, with the tolerance and why.
DENSE_TOLERANCE: dict[str, tuple[float, str]] = {
    "modelzip.quantize.int8.Int8Linear": (
        _INT8_RTOL,
        f"{_ACT_QUANT} per batch (PyTorch's dynamic int8 GEMM, 7-bit range); "
        "nn.Linear multiplies the float input",
    ),
    "modelzip.kernels.int8.Int8DynamicConv2d": (
        _INT8_RTOL,
        f"{_ACT_QUANT} per batch (PyTorch's dynamic int8 conv); nn.Conv2d takes the float input",
    ),
    "modelzip.quantize.static_int8.StaticInt8Linear": (
        _INT8_RTOL,
        f"{_ACT_QUANT} on calibrated grids, input and output (uint8 in, uint8 out)",
    ),
    "modelzip.quantize.static_int8.StaticInt8Conv2d": (
        _INT8_RTOL,
        f"{_ACT_QUANT} on calibrated grids, input and output (uint8 in, uint8 out)",
    ),
}


def _pact_grid(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """``x`` on a PACT layer's activation grid: ``act_bits`` levels in ``[0, alpha]``."""
    n = 2 ** int(layer.act_bits) - 1
    alpha = layer.alpha.float()
    return torch.round(torch.minimum(x.clamp_min(0), alpha) * n / alpha) * alpha / n


#: Classes whose forward quantizes its input before an exact product: their dense form is
#: compared on the quantized input (a tight check) instead of with a loose tolerance.
DENSE_INPUT: dict[str, tuple[Any, str]] = {
    "modelzip.kernels.bitserial_layers.BitSerialLinear": (
        _pact_grid,
        "it rounds its input to act_bits PACT levels (2 bits in the golden model) and multiplies "
        "the codes exactly; nn.Linear has no input quantization",
    ),
}
#: Relative tolerance of the ONNX (and ``exportable``) output against the layer's.
EXPORT_RTOL = 1e-4
#: Classes whose export form computes in another arithmetic, with the tolerance and why.
EXPORT_TOLERANCE: dict[str, tuple[float, str]] = {
    "modelzip.quantize.int8.Int8Linear": (
        _INT8_RTOL,
        "dynamic activations: the eager stand-in of the export form multiplies in float (1.0e-2 "
        "measured) and the ONNX graph quantizes per batch in onnxruntime's rounding (1.1e-2)",
    ),
    "modelzip.quantize.static_int8.StaticInt8Linear": (
        _INT8_RTOL,
        "on a CPU without VNNI (7-bit inputs) fbgemm's AVX2 requantization rounds some outputs "
        "on a rounding boundary one uint8 step away from the float stand-in (7.4e-3 measured on "
        "an AVX2 EPYC; exact with AVX-512 VNNI)",
    ),
    "modelzip.quantize.static_int8.StaticInt8Conv2d": (
        _INT8_RTOL,
        "onnxruntime's QLinearConv requantizes the output with its own rounding: values on a "
        "rounding boundary land one uint8 output step away (6 of 11,520 measured, 7.5e-3)",
    ),
}


def _ids() -> list[str]:
    """Test ids: the class name, with its module when two classes share a name."""
    names = [k.rsplit(".", 1)[-1] for k in KEYS]
    return [
        n if names.count(n) == 1 else k.removeprefix("modelzip.")
        for n, k in zip(names, KEYS, strict=True)
    ]


def _case(key: str) -> LayerCase:
    cases = layer_cases()
    assert key in cases, f"no golden model holds {key}: add one to tests/golden/make_golden.py"
    return cases[key]


def _run(module: nn.Module, inputs: tuple[Any, ...]) -> torch.Tensor:
    with torch.no_grad():
        return first_tensor(module.eval()(*inputs))


def _rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    scale = float(ref.detach().abs().max()) or 1.0
    return float((got.detach().float() - ref.detach().float()).abs().max()) / scale


class _Only(nn.Module):
    """A model holding just one layer (named ``layer``), returning its first output tensor."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.layer(x))


def test_tolerance_and_exemption_tables_name_registered_classes() -> None:
    """An entry for a class that no longer exists (renamed, removed) fails here, not silently."""
    tables = (DENSE_TOLERANCE, DENSE_INPUT, EXPORT_TOLERANCE)
    named = set().union(*tables)
    assert not named - set(KEYS), f"tables name unregistered classes: {sorted(named - set(KEYS))}"
    for table in tables:
        assert all(reason.strip() for _, reason in table.values())


def test_every_registered_class_has_an_instance() -> None:
    missing = sorted(set(KEYS) - set(layer_cases()))
    assert not missing, f"no golden model holds {missing}"


@pytest.mark.parametrize("key", KEYS, ids=_ids())
def test_spec_and_packed_state_round_trip(key: str) -> None:
    case = _case(key)
    layer = case.layer
    spec = json.loads(json.dumps(layer.spec()))  # JSON-able, as a file stores it
    rebuilt = type(layer).from_spec(spec)
    packed = layer.packed_state()
    rebuilt.load_packed_state({k: v.clone() for k, v in packed.items()})
    again = rebuilt.packed_state()
    assert set(again) == set(packed)
    for name, t in packed.items():
        assert again[name].dtype == t.dtype, name
        assert torch.equal(again[name], t), f"{name} changed in the round trip"
    y, y2 = _run(layer, case.inputs), _run(rebuilt, case.inputs)
    assert y2.shape == y.shape
    assert _rel_error(y2, y) <= 1e-6


@pytest.mark.parametrize("key", KEYS, ids=_ids())
def test_forward_equals_to_dense(key: str) -> None:
    case = _case(key)
    dense = case.layer.to_dense()
    assert isinstance(dense, nn.Module) and not isinstance(dense, CompressedModule)
    y = _run(case.layer, case.inputs)
    inputs = case.inputs
    if key in DENSE_INPUT:
        inputs = (DENSE_INPUT[key][0](case.layer, case.x), *inputs[1:])
    yd = _run(dense, inputs)
    assert yd.shape == y.shape
    tol = DENSE_TOLERANCE.get(key, (DENSE_RTOL, ""))[0]
    assert _rel_error(yd, y) <= tol


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@pytest.mark.parametrize("key", KEYS, ids=_ids())
def test_storage_bytes_are_the_bytes_written(key: str, tmp_path: Path) -> None:
    case = _case(key)
    packed = case.layer.packed_state()
    assert case.layer.storage_bytes() == sum(_nbytes(t) for t in packed.values())
    assert case.top_level, f"{case.name} is nested: the file holds its parent's tensors"
    path = modelzip.save(case.model, tmp_path / "model.mzip")
    with safe_open(str(path), "pt") as f:
        keys = {k for k in f.keys() if k.startswith(case.name + ".")}  # noqa: SIM118
        written = sum(_nbytes(f.get_tensor(k)) for k in keys)
    assert keys == {f"{case.name}.{k}" for k in packed}
    assert written == case.layer.storage_bytes()


_COUNTS = ("N", "C", "K", "R", "S", "P", "Q", "H", "W", "stride_h", "stride_w", "groups")


@pytest.mark.parametrize("key", KEYS, ids=_ids())
def test_workloads_are_well_formed(key: str) -> None:
    case = _case(key)
    loads = case.layer.workloads(case.name, case.inputs, case.output)
    assert isinstance(loads, list) and loads
    for w in loads:
        assert isinstance(w, Workload)
        assert w.name.startswith(case.name), w.name
        for field in dataclasses.fields(w):
            value = getattr(w, field.name)
            if isinstance(value, (int, float)):
                assert not isinstance(value, bool) and math.isfinite(value), field.name
                assert value >= 0, f"{w.name}.{field.name} = {value}"
        for field in (*_COUNTS, "time_steps", "weight_bits", "act_bits"):
            assert isinstance(getattr(w, field), int) and getattr(w, field) >= 1, field
        assert 0.0 <= w.weight_sparsity <= 1.0 and 0.0 <= w.act_sparsity <= 1.0
        assert w.effective_macs <= w.macs
    if not all(w.op == "embedding" for w in loads):
        assert sum(w.macs for w in loads) > 0
    assert sum(w.params for w in loads) > 0
    assert case.layer.param_count() > 0


@pytest.mark.parametrize("key", KEYS, ids=_ids())
def test_materialize_keeps_the_output_and_says_why(key: str) -> None:
    case = _case(key)
    wrapper = _Only(case.layer)
    y = _run(wrapper, case.inputs)
    # Each candidate form is checked with its kind's tolerance (int8 quantizes activations).
    kinds = [kind.split(":")[0] for kind, _ in candidates(case.layer, case.x)]
    tol = max([TOLERANCE["float"], *(TOLERANCE[k] for k in kinds)])
    fast, report = materialize(wrapper, case.x, reps=2, layout="contiguous")
    assert _rel_error(_run(fast, case.inputs), y) <= tol
    assert report.max_rel_error is not None and report.max_rel_error <= tol
    entries = {e.name: e for e in report.layers}
    if not declared_forms(case.layer):  # no executable form: left as it is, unreported
        assert "layer" not in entries
        assert type(fast.layer) is type(case.layer)
    else:
        assert entries["layer"].reason.strip(), f"no reason for {entries['layer']}"
        if entries["layer"].max_rel_error is not None:
            assert entries["layer"].max_rel_error <= tol
    assert all(e.reason.strip() for e in report.layers)


@pytest.mark.parametrize("key", KEYS, ids=_ids())
def test_onnx_export_matches_or_refuses_with_a_reason(key: str) -> None:
    case = _case(key)
    path = export_path(case.layer)
    assert path in ("traced", "dense", "converted") or path.startswith("refused: "), path
    wrapper = _Only(case.layer)
    if path.startswith("refused: "):
        reason = path.removeprefix("refused: ")
        assert reason.strip()
        with pytest.raises(ModelError, match=re.escape(reason)):
            exportable(wrapper)
        return
    tol = EXPORT_TOLERANCE.get(key, (EXPORT_RTOL, ""))[0]
    y = _run(wrapper, case.inputs)
    assert _rel_error(_run(exportable(wrapper), case.inputs), y) <= tol
    got = run_onnx(to_onnx_bytes(wrapper, case.x), case.x)
    assert got.shape == y.shape
    assert _rel_error(got, y) <= tol


@pytest.mark.parametrize("key", KEYS, ids=_ids())
def test_onnx_refusal_says_why_for_this_class(key: str) -> None:
    """A refusal names the layer's own reason, not the default every undeclared class inherits
    (which says only that nobody decided: the class is new, or its declaration was forgotten)."""
    path = export_path(_case(key).layer)
    assert path != CompressedModule.onnx_export, "declare onnx_export on the class"
