"""Packed layers, BN folding, static int8 execution, observers and QAT layers."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.context import Context
from modelzip.core.selection import Select
from modelzip.deploy import trainable
from modelzip.models import create
from modelzip.quantize import (
    BinaryConfig,
    Int8Config,
    QATConfig,
    QuantizeWeightsConfig,
    TernaryConfig,
    fold_bn,
    quantize_bn,
)
from modelzip.quantize.fake import FakeQuantLinear, qat
from modelzip.quantize.observers import PACT, Observer, fake_quantize_affine
from modelzip.quantize.static_int8 import StaticInt8Conv2d, StaticInt8Linear


def _lenet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return create("lenet5").eval(), torch.rand(8, 1, 28, 28)


@pytest.mark.parametrize(
    "config, bits",
    [(BinaryConfig(), 1), (TernaryConfig(), 2), (QuantizeWeightsConfig(bits=3), 3),
     (QuantizeWeightsConfig(bits=4, levels="log2"), 4)],
)  # fmt: skip
def test_saved_file_shrinks_by_the_bit_width(config, bits, tmp_path):
    model, x = _lenet()
    small, report = modelzip.compress(model, config, sample=x, measure=False)
    dense_path = modelzip.save(model, tmp_path / "dense.mzip")
    path = modelzip.save(small, tmp_path / "small.mzip")  # deployed: saved in its compact form
    weights = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    )
    compact = trainable(small)
    for change in report.layers:
        layer = compact.get_submodule(change.name)
        assert layer.packed.numel() == -(-layer.codes().numel() * bits // 8)
    ratio = dense_path.stat().st_size / path.stat().st_size
    assert ratio > 32 / bits * 0.8, ratio  # levels, biases and the header cost a little
    loaded = modelzip.load(path)
    with torch.inference_mode():
        assert torch.equal(loaded(x), small(x))
    assert weights > 400_000


def test_mixed_precision_through_selectors():
    model, x = _lenet()
    recipe = [QuantizeWeightsConfig(bits=8, select=Select(names=("fc2", "conv1"))),
              QuantizeWeightsConfig(bits=2)]  # fmt: skip
    small, report = modelzip.compress(model, recipe, sample=x, measure=False, deploy=False)
    bits = {n: small.get_submodule(n).weight_bits for n in ("conv1", "conv2", "fc1", "fc2")}
    assert bits == {"conv1": 8, "conv2": 2, "fc1": 2, "fc2": 8}
    assert {s.name for s in report.skipped} >= {"conv1", "fc2"}


def _bn_model() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, 3, padding=1), bn=nn.BatchNorm2d(8), relu=nn.ReLU(),
        conv2=nn.Conv2d(8, 4, 3, bias=False), bn2=nn.BatchNorm2d(4), flat=nn.Flatten(),
        fc=nn.Linear(4 * 6 * 6, 5), bn3=nn.BatchNorm1d(5),
    ))  # fmt: skip
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_bn_folding_leaves_outputs_unchanged():
    model, x = _bn_model(), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        pairs = fold_bn(model)
        assert pairs == [("conv", "bn"), ("conv2", "bn2"), ("fc", "bn3")]
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_quantized_bn_parameters():
    bn = _bn_model().bn
    x = torch.randn(4, 8, 5, 5)
    with torch.no_grad():
        ref = bn(x)
        for bits, tol in ((8, 0.05), (16, 2e-4)):
            assert (quantize_bn(bn, bits)(x) - ref).abs().max() < tol


def test_static_int8_runs_int8_kernels_and_matches_simulation():
    model, x = _lenet()
    small, report = modelzip.compress(  # the trainable form: its layers run the int8 engine
        model, Int8Config(activations="static"), sample=x, measure=False, deploy=False
    )
    layers = [small.get_submodule(c.name) for c in report.layers]
    assert {type(m) for m in layers} == {StaticInt8Conv2d, StaticInt8Linear}
    with torch.inference_mode():
        got = small(x)  # int8 kernels
    with torch.enable_grad():
        simulated = small(x).detach()  # the float simulation of the same arithmetic
    ref = model(x).detach()
    assert (got - simulated).abs().max() <= 0.05 * simulated.abs().max()
    assert (got - ref).abs().max() <= 0.1 * ref.abs().max()
    assert "_engine_cache" in vars(layers[0])  # the prepacked int8 weight was used


def _saturating_layer(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A layer whose uint8 × int8 products saturate in int16 pairs without VNNI: every weight
    at +127 (or -127 on odd outputs) and every input at the top of its calibrated range."""
    torch.manual_seed(0)
    if kind == "linear":
        dense, x = nn.Linear(64, 8), torch.full((3, 64), 2.0)
    else:
        dense, x = nn.Conv2d(16, 8, 3, padding=1), torch.full((2, 16, 5, 5), 2.0)
    with torch.no_grad():
        dense.weight.fill_(0.05)
        dense.weight[1::2].neg_()
        dense.bias.zero_()
    return nn.Sequential(dense).eval(), x


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_static_int8_kernels_match_the_simulation_where_products_saturate(kind):
    """Without VNNI (or with the fallbacks forced: see `make test-fallback`) 8-bit inputs would
    make each pair of products 2 · 255 · 127 > 32767 and the kernels would return about half of
    the sum; 7-bit inputs (modelzip.kernels.isa) keep them equal to the simulation."""
    dense, x = _saturating_layer(kind)
    calibration = torch.cat([x, torch.zeros_like(x)])
    small, _ = modelzip.compress(dense, Int8Config(activations="static"), sample=calibration,
                                 measure=False, deploy=False)  # fmt: skip
    assert isinstance(small[0], (StaticInt8Linear, StaticInt8Conv2d))
    with torch.inference_mode():
        got = small(x)  # int8 kernels
    with torch.enable_grad():
        simulated = small(x).detach()
    ref = dense(x).detach()
    assert (got - simulated).abs().max() <= 0.05 * simulated.abs().max()
    assert (got - ref).abs().max() <= 0.05 * ref.abs().max()


def test_static_int8_inputs_use_7_bits_where_products_can_saturate(monkeypatch):
    monkeypatch.setenv("MODELZIP_INT8_REDUCE_RANGE", "1")
    model, x = _lenet()
    small, report = modelzip.compress(  # the trainable form: its layers run the int8 engine
        model, Int8Config(activations="static"), sample=x, measure=False, deploy=False
    )
    inputs = {}
    for change in report.layers:
        layer = small.get_submodule(change.name)
        layer.register_forward_pre_hook(lambda m, a: inputs.update({m: inputs.get(m, a[0])}))
        scale, zero, qmax = layer.input_qparams()
        assert qmax == 127 and 0 <= int(zero) <= 127
        # The calibrated range is kept: the same interval split into 127 steps instead of 255.
        lo, hi = -int(layer.in_zero) * layer.in_scale, (255 - int(layer.in_zero)) * layer.in_scale
        assert float(-zero * scale) == pytest.approx(float(lo), abs=float(scale) / 2)
        assert float((127 - zero) * scale) == pytest.approx(float(hi), abs=float(scale) / 2)
    with torch.inference_mode():
        got = small(3 * x)  # beyond the calibrated ranges
    for layer, seen in inputs.items():
        assert int(layer._quantize_input(seen).int_repr().max()) == 127
    with torch.enable_grad():
        simulated = small(3 * x).detach()
    # The same tolerance as with 8 bits (test_static_int8_runs_int8_kernels_and_matches_...).
    assert (got - simulated).abs().max() <= 0.05 * simulated.abs().max()


def test_static_int8_needs_calibration_data():
    model, _ = _lenet()
    with pytest.raises(modelzip.core.errors.ModelzipError, match="calibration"):
        modelzip.compress(model, Int8Config(activations="static"), measure=False, evaluate=False)


def test_observers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=g)
    x[0] = 50.0
    mm, pc, mse = Observer("minmax"), Observer("percentile", percentile=99.9), Observer("mse", 4)
    for obs in (mm, pc, mse):
        obs.observe(x)
    assert mm.range() == (float(x.min()), 50.0)
    assert pc.range()[1] < 5.0
    lo, hi = mse.range()
    err = ((x - fake_quantize_affine(x, lo, hi, 4)) ** 2).sum()
    assert err <= ((x - fake_quantize_affine(x, *mm.range(), 4)) ** 2).sum()
    with pytest.raises(ValueError, match="NaN"):
        mm.observe(torch.tensor([float("nan")]))


def test_pact_learns_its_clip():
    pact = PACT(bits=4, alpha=1.0)
    x = torch.tensor([-1.0, 0.5, 2.0, 3.0], requires_grad=True)
    pact(x).sum().backward()
    assert float(pact.alpha.grad) == 2.0  # the two inputs above the clip
    assert x.grad.tolist() == [0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("scheme", ["uniform", "dorefa", "binary", "ternary", "ttq"])
def test_qat_layers_train_through_ste(scheme):
    torch.manual_seed(0)
    dense = nn.Linear(12, 6)
    small = qat(dense, QATConfig(weights=scheme, bits=2), Context())
    assert isinstance(small, FakeQuantLinear)
    x = torch.randn(5, 12)
    small(x).square().sum().backward()
    assert small.weight.grad is not None and small.weight.grad.abs().sum() > 0
    n_values = len(torch.unique(small.quantized_weight().detach()))
    assert (
        n_values
        <= {"uniform": 3 * 6, "dorefa": 4 * 6, "binary": 2 * 6, "ternary": 2 * 6 + 1, "ttq": 3}[
            scheme
        ]
    )
    if scheme == "ttq":
        assert small.wp.grad is not None and small.wn.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "config",
    [QuantizeWeightsConfig(bits=4, levels="adaptive", formulation="optimized"), BinaryConfig(),
     TernaryConfig(), QATConfig(weights="ttq"), Int8Config(activations="static")],
    ids=lambda c: c.method,
)  # fmt: skip
def test_cuda_model_quantizes_on_cuda(config):
    model, x = _lenet()
    cpu, _ = modelzip.compress(model, config, sample=x, measure=False)
    gpu, _ = modelzip.compress(model.cuda(), config, sample=x.cuda(), measure=False)
    assert all(t.is_cuda for t in gpu.state_dict().values())
    with torch.no_grad():  # the CPU int8 kernels versus the float simulation on CUDA
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), atol=0.05, rtol=0.05)


def test_inq_stages_freeze_the_largest_weights_on_powers_of_two():
    from modelzip.quantize.inq import _Freezer

    torch.manual_seed(0)
    layer = nn.Linear(20, 10)
    freezer = _Freezer({"fc": layer})
    freezer.stage(0.5, bits=4)
    w = layer.weight.detach().clone()
    on_grid = freezer.masks["fc"]
    assert on_grid.sum() == 100
    nonzero = w[on_grid][w[on_grid] != 0].abs()
    assert torch.equal(torch.exp2(torch.round(torch.log2(nonzero))), nonzero)
    with torch.no_grad():
        layer.weight.add_(0.01)  # an optimizer step
    freezer(layer, 1, 0)
    assert torch.equal(layer.weight.detach()[on_grid], w[on_grid])
    assert not torch.equal(layer.weight.detach()[~on_grid], w[~on_grid])
