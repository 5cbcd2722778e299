"""Capabilities are declared on the layer class and at registration, not in tables elsewhere.

A new weight format (a layer class) that exports densely and runs as its dense form needs no
edit to :mod:`modelzip.export.convert` or :mod:`modelzip.deploy`; a method that
declares a knob is swept by sensitivity analysis without an edit to
:mod:`modelzip.joint.sensitivity` (issue #19, item 2).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core import registry
from modelzip.core.config import MethodConfig
from modelzip.core.forms import candidates
from modelzip.core.module import CompressedModule, dense_linear
from modelzip.deploy import TOLERANCE
from modelzip.export import export_path, exportable
from modelzip.kernels import materialize
from modelzip.quantize.int8_method import Int8Config


class HalfLinear(CompressedModule):
    """A toy weight format: the weight stored in float16, declared exportable and executable."""

    onnx_export = "dense"
    executable_forms = ("dense",)
    stands_for = "Linear"

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.register_buffer("w16", torch.zeros(out_features, in_features, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features))

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> HalfLinear:
        layer = cls(dense.in_features, dense.out_features)
        with torch.no_grad():
            layer.w16.copy_(dense.weight.half())
            layer.bias.copy_(dense.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.w16.float(), self.bias)

    def to_dense(self) -> nn.Module:
        return dense_linear(self.w16.float(), self.bias.detach())

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.w16.shape[1], "out_features": self.w16.shape[0]}


class Undeclared(HalfLinear):
    onnx_export = CompressedModule.onnx_export
    executable_forms = ()


def test_a_new_format_exports_and_materializes_without_a_table() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(HalfLinear.from_dense(nn.Linear(8, 4)), nn.ReLU()).eval()
    x = torch.randn(5, 8)
    assert export_path(model[0]) == "dense"
    torch.testing.assert_close(exportable(model)(x), model(x))
    assert [kind for kind, _ in candidates(model[0], x)] == ["dense"]
    _, report = materialize(model, x)
    assert [entry.name for entry in report.layers] == ["0"]
    assert report.max_rel_error is not None and report.max_rel_error < 1e-5


def test_a_class_that_declares_nothing_is_refused_with_a_reason() -> None:
    layer = Undeclared.from_dense(nn.Linear(3, 2))
    assert export_path(layer).startswith("refused: ") and len(export_path(layer)) > 20
    with pytest.raises(modelzip.ModelError, match="cannot be exported to ONNX"):
        exportable(nn.Sequential(layer))
    assert candidates(layer, None) == []


def test_an_unknown_converter_name_is_refused() -> None:
    class Odd(HalfLinear):
        onnx_export = "converter:no_such_converter"

    assert "no_such_converter" in export_path(Odd.from_dense(nn.Linear(3, 2)))


def test_static_int8_materializes_without_crashing() -> None:
    """#20: materialize crashed with ``unexpected keyword argument 'activations'``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(32, 4, 4)
    small, _ = modelzip.compress(
        model, Int8Config(activations="static"), sample=x, evaluate=False, measure=False,
        deploy=False,
    )  # fmt: skip
    fast, report = materialize(small, x)  # static int8, chained, or dense: whichever is faster
    assert report.max_rel_error is not None and report.max_rel_error <= TOLERANCE["int8"]
    with torch.no_grad():
        ref = small(x)
        assert float((fast(x) - ref).abs().max()) <= TOLERANCE["int8"] * float(ref.abs().max())


@dataclasses.dataclass(frozen=True)
class _ScaleConfig(MethodConfig):
    method = "toy_scale_weights"
    factor: float = 1.0


def test_a_declared_knob_reaches_sensitivity_without_an_edit(monkeypatch) -> None:
    from modelzip.joint.sensitivity import SensitivityConfig, knob_of, layer_config

    def handler(module: nn.Module, config: _ScaleConfig, ctx: Any) -> nn.Module:
        return module

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(registry, "_BY_TYPE", dict(registry._BY_TYPE))
    registry.register_method(_ScaleConfig, family="toy", knob=registry.Knob("factor", (0.5, 2)))(
        handler
    )
    config = SensitivityConfig(methods=("toy_scale_weights", "svd"))
    assert config.values("toy_scale_weights") == (0.5, 2)
    assert knob_of("toy_scale_weights").field == "factor"
    step = layer_config("toy_scale_weights", 2, "fc1")
    assert isinstance(step, _ScaleConfig) and step.factor == 2.0


def test_a_knob_must_name_a_config_field() -> None:
    with pytest.raises(modelzip.ConfigError, match="no field 'nope'"):
        registry.register_method(_ScaleConfig, family="toy", knob=registry.Knob("nope", (1,)))


def test_every_method_with_a_knob_sweeps_its_declared_field() -> None:
    for name in registry.knob_methods():
        spec = registry.get_method(name)
        assert spec.knob is not None
        assert spec.knob.field in {f.name for f in dataclasses.fields(spec.config_type)}
        config = spec.knob.config(spec.config_type, spec.knob.values[-1])
        assert isinstance(config, spec.config_type)
