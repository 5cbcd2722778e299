"""k-bit and ternary layers as static int8 layers: same weights, recorded activation ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.context import Context
from modelzip.core.forms import candidates
from modelzip.deploy import TOLERANCE, materialize, trainable
from modelzip.models.registry import create
from modelzip.quantize.int8_chain import ChainedModel
from modelzip.quantize.static_codes import int8_static_codes, static_int8_refusal
from modelzip.quantize.static_int8 import StaticInt8Conv2d, StaticInt8Linear
from modelzip.quantize.weights import (
    QuantizeWeightsConfig,
    TernaryConfig,
    quantize_weights,
    ternary,
)

FOUR_BIT = QuantizeWeightsConfig(bits=4)
FORM = "int8:x86 conv2d (static, codes once)"


def _quantized(dense: nn.Module, config: object, x: torch.Tensor | None) -> nn.Module:
    """``dense`` quantized by ``config``'s handler, calibrated on ``x`` (None: no sample)."""
    ctx = Context(sample=x, model=dense)
    handler = ternary if isinstance(config, TernaryConfig) else quantize_weights
    return handler(dense, config, ctx).eval()  # type: ignore[arg-type]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _case(case: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(case)
    if case == 0:
        return nn.Conv2d(8, 16, 3, padding=1), torch.randn(4, 8, 10, 10)
    return nn.Linear(32, 12), torch.randn(6, 32)


@pytest.mark.parametrize("config", [FOUR_BIT, TernaryConfig()], ids=["4bit", "ternary"])
@pytest.mark.parametrize("case", [0, 1], ids=["conv", "linear"])
def test_the_int8_form_holds_the_same_weights_and_agrees(config: object, case: int) -> None:
    dense, x = _case(case)
    layer = _quantized(dense, config, x)
    assert layer.activation_ranges() is not None
    ((kind, build),) = int8_static_codes(layer, x)
    new = build()
    assert isinstance(new, (StaticInt8Conv2d, StaticInt8Linear))
    # The quantized layer's weight, re-expressed on the int8 grid: at most 2^bits integer codes
    # per row, equal up to float rounding (codes × step instead of offset + scale × code).
    levels = 16 if config is FOUR_BIT else 3
    rows = new.codes.reshape(new.codes.shape[0], -1)
    assert max(len(torch.unique(r)) for r in rows) <= levels
    assert int(new.codes.abs().max()) <= (8 if config is FOUR_BIT else 1)
    w = layer.dequantized_weight()
    tol = 1e-6 * float(w.abs().max())
    torch.testing.assert_close(new.dequantized_weight(), w, rtol=0, atol=tol)
    with torch.no_grad():
        err = _rel(new(x), layer(x))
    assert err <= TOLERANCE[kind.split(":")[0]]


def test_without_ranges_or_on_no_int8_grid_the_layer_keeps_its_other_forms() -> None:
    dense, x = _case(0)
    unsampled = _quantized(dense, FOUR_BIT, None)
    assert "act_range" not in dict(unsampled.named_buffers())
    assert "no activation ranges" in static_int8_refusal(unsampled)
    # k-means levels: no common step divides them.
    kmeans = _quantized(dense, QuantizeWeightsConfig(bits=4, levels="adaptive"), x)
    assert "no int8 grid" in static_int8_refusal(kmeans)
    for layer in (unsampled, kmeans):
        assert int8_static_codes(layer, x) == []
        kinds = [k for k, _ in candidates(layer, x)]
        assert "dense" in kinds and FORM not in kinds
        _, report = materialize(nn.Sequential(layer), x, choose="compressed", layout="contiguous")
        assert report.layers[0].form != FORM


def test_vgg_4bit_convs_deploy_to_static_int8_and_the_file_keeps_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = create("vgg_small").eval(), torch.randn(8, 1, 28, 28)
    small, _ = modelzip.compress(model, FOUR_BIT, sample=x, deploy=False, measure=False,
                                 evaluate=False)  # fmt: skip
    # The compressed form's tensors and spec carry the ranges through a file.
    reloaded = modelzip.load(modelzip.save(small, tmp_path / "compact.mzip"))
    assert torch.equal(reloaded.conv2.act_range, small.conv2.act_range)
    deployed, report = materialize(reloaded, x, choose="compressed", layout="contiguous")
    convs = [r for r in report.rows() if r["name"].startswith("conv")]
    # Every conv offers the form; it is taken where the layer's output agrees within the int8
    # tolerance (on this random-weight VGG one conv's sample has outliers beyond it).
    assert all(FORM in [k for k, _ in candidates(small.get_submodule(r["name"]), None)]
               for r in convs)  # fmt: skip
    taken = [r for r in convs if r["form"] == FORM]
    assert len(taken) >= 3 and all(r["max_rel_error"] <= TOLERANCE["int8"] for r in taken)
    for r in taken:
        assert isinstance(deployed.get_submodule(r["name"]), StaticInt8Conv2d)
    # The BNs after them fold into the engine's scales, so uint8 passes between the convs; the
    # eager model keeps its BNs and goes back to the 4-bit layers unchanged.
    assert report.int8_links >= 2 and isinstance(deployed, ChainedModel)
    with torch.no_grad():
        assert _rel(deployed(x), small(x)) <= 2 * TOLERANCE["int8"]
        assert torch.equal(trainable(deployed).eval()(x), small.eval()(x))
    path = modelzip.save(deployed, tmp_path / "deployed.mzip")
    loaded = modelzip.load(path)
    assert [type(m).__name__ for m in loaded.modules()] == [
        type(m).__name__ for m in deployed.modules()
    ]
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))


def test_a_layer_the_model_never_calls_records_no_ranges() -> None:
    """A layer the forward skips (or whose weight a parent reads directly) is quantized, but no
    activation range is made up for it: it offers no static int8 form, with the reason."""

    class Partly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(6, 4), nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    torch.manual_seed(0)
    small, report = modelzip.compress(
        Partly().eval(), QuantizeWeightsConfig(bits=4), sample=torch.randn(8, 6),
        measure=False, deploy=False,
    )  # fmt: skip
    assert {c.name for c in report.layers} == {"used", "unused"}
    assert small.used.activation_ranges() is not None
    assert small.unused.activation_ranges() is None
    assert "no activation ranges" in static_int8_refusal(small.unused)


def test_the_resnet_is_timed_whole_and_all_static_int8_chains_through_its_adds(
    tmp_path: Path,
) -> None:
    """Layers timed alone pick dense for some 4-bit convs, which breaks the uint8 chain; the
    whole model with every layer static int8 (BNs before the adds folded, adds in int8) is a
    candidate timed against that choice, and the report says which won and the timings."""
    torch.manual_seed(0)
    model, x = create("resnet_small").eval(), torch.rand(16, 1, 28, 28)
    small, _ = modelzip.compress(model, FOUR_BIT, sample=x, deploy=False, measure=False,
                                 evaluate=False)  # fmt: skip
    deployed, report = materialize(small, x)
    assert "static int8" in report.model_ms and "per-layer" in report.model_ms
    assert report.model_choice == min(report.model_ms, key=report.model_ms.__getitem__)
    assert report.note.startswith(f"whole model: {report.model_choice} kept")
    with torch.no_grad():
        assert _rel(deployed(x), small(x)) <= TOLERANCE["int8"]
    if report.model_choice == "static int8":
        # 9 convs (the fc's output is the model's) and the 3 residual adds pass uint8 on.
        assert report.int8_links == 12 and isinstance(deployed, ChainedModel)
        assert all(isinstance(deployed.get_submodule(r["name"]), (StaticInt8Conv2d,
                   StaticInt8Linear)) for r in report.rows())  # fmt: skip
        with torch.no_grad():
            assert torch.equal(trainable(deployed).eval()(x), small.eval()(x))
    loaded = modelzip.load(modelzip.save(deployed, tmp_path / "resnet.mzip"))  # re-chained
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))
