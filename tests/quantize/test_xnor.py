"""XNOR-Net (Rastegari et al., ECCV 2016): binary weights and inputs, STE training, the XNOR
kernel form, the file form, and a short MNIST run."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelzip
from modelzip.core.errors import ConfigError
from modelzip.deploy import TOLERANCE, materialize, trainable
from modelzip.kernels.layers import BinaryConv2d, BinaryLinear
from modelzip.models import create
from modelzip.quantize import XNORConv2d, XNORLinear, XNORNetConfig
from modelzip.quantize.xnor import sign_ste
from modelzip.recipe import Recipe
from modelzip.train import TrainConfig, evaluate


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _lenet(batch: int = 16) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return create("lenet5").eval(), torch.rand(batch, 1, 28, 28)


def _layers(scale: bool) -> tuple[XNORLinear, XNORConv2d]:
    torch.manual_seed(1)
    linear = XNORLinear.from_dense(nn.Linear(70, 9), XNORNetConfig(scale_activations=scale))
    conv = nn.Conv2d(6, 5, (3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2))
    return linear, XNORConv2d.from_dense(conv, XNORNetConfig(scale_activations=scale))


def test_weights_and_inputs_are_binary_inside() -> None:
    linear, conv = _layers(scale=False)
    for layer in (linear, conv):
        w = layer.decoded_weight().flatten(1)
        alpha = layer.weight.detach().flatten(1).double().abs().mean(1).float()  # mean|W|
        torch.testing.assert_close(w.abs(), alpha[:, None].expand_as(w), rtol=0, atol=0)
        assert torch.equal(torch.sign(w), _sign(layer.weight.detach().flatten(1)))
    x = torch.randn(4, 70)
    y = linear(x)
    want = F.linear(_sign(x), linear.decoded_weight(), linear.bias)
    assert torch.equal(y, want)
    # Only the signs of x count: other magnitudes of the same signs give the same output.
    assert torch.equal(linear(x.sign() * torch.rand(4, 70).add(0.1) * 7), y)
    xc = torch.randn(2, 6, 9, 8)
    yc = conv(xc)
    assert torch.equal(conv(xc.sign() * torch.rand_like(xc).add(0.1)), yc)
    g = conv.geometry
    torch.testing.assert_close(yc, F.conv2d(_sign(xc), conv.decoded_weight(), conv.bias,
                                            g.stride, g.padding, g.dilation))  # fmt: skip


def test_alpha_beta_and_k_as_the_paper_defines() -> None:
    linear, conv = _layers(scale=True)
    x = torch.randn(4, 70, dtype=torch.float64)
    w = linear.weight.detach().double()
    alpha = w.abs().mean(1)  # α = ‖W‖ℓ1 / n per output row
    beta = x.abs().mean(1, keepdim=True)  # β = ‖x‖ℓ1 / n per input row
    want = (_sign(x) @ _sign(w).T) * alpha * beta + linear.bias.detach().double()
    torch.testing.assert_close(linear(x.float()).double(), want, rtol=1e-5, atol=1e-6)
    # K: the mean |x| over the channels, averaged over each kernel window (zero padding counts),
    # which is the mean |x| over the C·kh·kw entries of each im2col column.
    xc = torch.randn(2, 6, 9, 8, dtype=torch.float64)
    g = conv.geometry
    cols = F.unfold(xc.abs(), g.kernel_size, g.dilation, g.padding, g.stride)
    wc = conv.weight.detach().double()
    y0 = F.conv2d(_sign(xc), _sign(wc) * wc.abs().mean((1, 2, 3), keepdim=True), None,
                  g.stride, g.padding, g.dilation)  # fmt: skip
    k = cols.mean(1).reshape(2, 1, *y0.shape[2:])
    want = y0 * k + conv.bias.detach().double().reshape(1, -1, 1, 1)
    torch.testing.assert_close(conv(xc.float()).double(), want, rtol=1e-5, atol=1e-6)


def test_straight_through_gradients_vanish_beyond_one() -> None:
    r = torch.tensor([-3.0, -1.5, -0.5, 0.0, 0.3, 0.99, 1.2, 4.0], requires_grad=True)
    sign_ste(r).sum().backward()
    assert r.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    linear, _ = _layers(scale=False)
    x = (torch.rand(3, 70) * 4 - 2).requires_grad_(True)  # half inside ±1, half beyond
    linear(x).square().sum().backward()
    inside = x.detach().abs() < 1
    assert bool((x.grad[~inside] == 0).all())
    assert bool((x.grad[inside] != 0).all())
    # The latent weights learn through sign too (and through α = mean|W|).
    assert linear.weight.grad is not None and float(linear.weight.grad.abs().sum()) > 0


def test_first_and_last_layers_kept_with_the_reason() -> None:
    model, x = _lenet()
    small, report = modelzip.compress(model, XNORNetConfig(), sample=x, measure=False,
                                      deploy=False)  # fmt: skip
    assert {c.name: c.after for c in report.layers} == {"conv2": "XNORConv2d", "fc1": "XNORLinear"}
    skipped = {s.name: s.reason for s in report.skipped}
    assert set(skipped) == {"conv1", "fc2"}
    assert "first layer" in skipped["conv1"] and "last layer" in skipped["fc2"]
    assert all("keep_first_last" in r for r in skipped.values())
    assert isinstance(small.conv1, nn.Conv2d) and isinstance(small.fc2, nn.Linear)
    # Without keep_first_last, conv1 (normalized, signed input) is binarized; fc2 reads a ReLU's
    # output, which sign() would turn into +1 everywhere, so it is skipped with that reason.
    _, report = modelzip.compress(model, XNORNetConfig(keep_first_last=False), sample=x,
                                  measure=False, deploy=False)  # fmt: skip
    assert {c.name for c in report.layers} == {"conv1", "conv2", "fc1"}
    (fc2,) = report.skipped
    assert fc2.name == "fc2" and "never negative" in fc2.reason


def test_layers_the_kernels_cannot_run_are_skipped() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        first=nn.Conv2d(3, 4, 3), grouped=nn.Conv2d(4, 4, 3, groups=2),
        same=nn.Conv2d(4, 4, 3, padding="same"), plain=nn.Conv2d(4, 4, 3),
        flat=nn.Flatten(), head=nn.Linear(4 * 6 * 6, 2),
    ))  # fmt: skip
    x = torch.randn(2, 3, 12, 12)
    _, report = modelzip.compress(model, XNORNetConfig(), sample=x, measure=False, deploy=False)
    assert [c.name for c in report.layers] == ["plain"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert "groups=1" in reasons["grouped"] and "numeric zero padding" in reasons["same"]


def test_config_validates_and_reads_from_yaml() -> None:
    recipe = Recipe.from_list([{"method": "xnor_net", "scale_activations": False}])
    (config,) = recipe.steps
    assert config == XNORNetConfig(scale_activations=False, keep_first_last=True)
    assert XNORNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError):
        XNORNetConfig(keep_first_last="yes")  # type: ignore[arg-type]


def test_save_load_bit_exact_at_one_bit_per_weight(tmp_path) -> None:
    model, x = _lenet()
    small, _ = modelzip.compress(model, XNORNetConfig(), sample=x, measure=False, deploy=False)
    path = modelzip.save(small, tmp_path / "xnor.mzip")
    loaded = modelzip.load(path)
    assert isinstance(loaded.conv2, XNORConv2d) and isinstance(loaded.fc1, XNORLinear)
    with torch.inference_mode():
        assert torch.equal(loaded(x), small(x))
    for name in ("conv2", "fc1"):
        ours, theirs = small.get_submodule(name), loaded.get_submodule(name)
        for key, t in ours.packed_state().items():
            assert torch.equal(theirs.packed_state()[key], t), f"{name}.{key}"
        # Loading sets the latent weight to α·sign(W).
        assert torch.equal(theirs.weight, ours.decoded_weight())
    fc1 = small.fc1
    n = fc1.weight.numel()
    assert set(fc1.packed_state()) == {"words", "alpha", "bias"}
    assert fc1.storage_bytes() == 8 * 500 * -(-800 // 64) + 4 * 500 + 4 * 500
    assert 4 * n / fc1.storage_bytes() > 25  # ~1 bit per weight against 32
    dense_bytes = modelzip.save(model, tmp_path / "dense.mzip").stat().st_size
    # conv1 and fc2 stay float (22 kB of the 1.7 MB model); the rest is 1 bit per weight.
    assert dense_bytes / path.stat().st_size > 15


def test_materialize_takes_the_xnor_kernel_and_agrees(tmp_path) -> None:
    model, x = _lenet(batch=64)
    small, _ = modelzip.compress(model, XNORNetConfig(), sample=x, measure=False, deploy=False)
    with torch.inference_mode():
        ref = small(x)
    fast, report = materialize(small, x, choose="compressed")
    entries = {e.name: e for e in report.layers}
    for name, cls in (("conv2", BinaryConv2d), ("fc1", BinaryLinear)):
        layer = fast.get_submodule(name)
        assert type(layer) is cls and layer.mode == "xnor" and layer.act_scale
        assert entries[name].form == "exact:XNOR-popcount"
        assert entries[name].max_rel_error <= TOLERANCE["exact"]
    with torch.inference_mode():
        assert _rel(fast(x), ref) <= TOLERANCE["exact"]
    # Saved deployed: the file keeps the 1-bit compact form and loads the kernel form again.
    loaded = modelzip.load(modelzip.save(fast, tmp_path / "deployed.mzip"))
    assert type(loaded.conv2) is BinaryConv2d and loaded.conv2.act_scale
    with torch.inference_mode():
        assert torch.equal(loaded(x), fast(x))
    # And back to the trainable layers for another recipe step.
    again = trainable(loaded)
    assert type(again.conv2) is XNORConv2d and again.conv2.weight.requires_grad


def test_without_activation_scale_the_kernel_form_has_none() -> None:
    model, x = _lenet()
    config = XNORNetConfig(scale_activations=False)
    small, _ = modelzip.compress(model, config, sample=x, measure=False, deploy=False)
    fast, _ = materialize(small, x, choose="compressed")
    assert type(fast.fc1) is BinaryLinear and not fast.fc1.act_scale
    assert "act_scale" not in fast.fc1.spec()  # written only when on: older files unchanged
    with torch.inference_mode():
        assert _rel(fast(x), small(x)) <= TOLERANCE["exact"]


def test_binary_layer_activation_scale_spec() -> None:
    dense = nn.Linear(10, 3)
    with torch.no_grad():
        dense.weight.copy_(_sign(dense.weight) * 0.25)
    layer = BinaryLinear.from_dense(dense, "xnor", act_scale=True)
    spec = json.loads(json.dumps(layer.spec()))
    assert spec["act_scale"] is True
    rebuilt = BinaryLinear.from_spec(spec)
    rebuilt.load_packed_state(layer.packed_state())
    x = torch.randn(5, 10)
    with torch.no_grad():
        want = (_sign(x) @ _sign(dense.weight).T) * 0.25 * x.abs().mean(1, keepdim=True)
        torch.testing.assert_close(rebuilt(x), want + dense.bias, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.to_dense()(x), layer(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mode='xnor'"):
        BinaryLinear(10, 3, mode="bwn", act_scale=True)


def test_short_training_run_learns_mnist(mnist) -> None:
    """A few hundred Adam steps from a random LeNet-5: the XNOR network learns far above the 10%
    of chance (about 93% measured with these settings)."""
    torch.manual_seed(0)
    model = create("lenet5")
    finetune = TrainConfig(epochs=1, steps_per_epoch=300, batch_size=64, lr=2e-3,
                           optimizer="adam", weight_decay=0.0, val_size=0, threads=2)  # fmt: skip
    small, report = modelzip.compress(model, XNORNetConfig(), mnist, finetune=finetune,
                                      evaluate=False, measure=False, deploy=False)  # fmt: skip
    assert {c.name for c in report.layers} == {"conv2", "fc1"}
    assert isinstance(small.fc1, XNORLinear)  # trained as XNOR layers, not replaced
    test = (mnist.x_test[:2000], mnist.y_test[:2000])
    accuracy = evaluate(small, mnist, test)["accuracy"]
    assert accuracy > 0.8, accuracy
    fast, _ = materialize(small, mnist.x_test[:64], choose="compressed")
    assert evaluate(fast, mnist, test)["accuracy"] == pytest.approx(accuracy, abs=2e-3)
