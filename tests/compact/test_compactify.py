"""Compactifying a trained CNN: compact layers start equal to (or the best approximation of) the
dense conv, count their parameters by formula, and distillation follows Hinton's loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelzip
from modelzip.compact import (
    BottleneckConv2d,
    BottleneckConvConfig,
    DepthwiseSeparableConfig,
    DepthwiseSeparableConv2d,
    GroupConv2d,
    GroupConvConfig,
    distill,
    distillation_loss,
    recalibrate_batchnorm,
)
from modelzip.core.errors import ConfigError
from modelzip.models import create
from modelzip.train import TrainConfig, evaluate


def _conv(c=4, o=6, k=3, **kw):
    torch.manual_seed(0)
    return nn.Conv2d(c, o, k, padding=1, **kw)


def test_separable_exact_at_full_multiplier_and_counts():
    conv, x = _conv(), torch.randn(2, 4, 7, 7)
    full = DepthwiseSeparableConv2d.from_dense(conv, DepthwiseSeparableConfig(depth_multiplier=99))
    torch.testing.assert_close(full(x), conv(x), rtol=1e-4, atol=1e-5)
    one = DepthwiseSeparableConv2d.from_dense(conv, DepthwiseSeparableConfig(depth_multiplier=1))
    assert one.param_count() == 4 * 9 + 6 * 4 + 6
    torch.testing.assert_close(one(x), one.to_dense()(x), rtol=1e-4, atol=1e-5)


def test_separable_rank_one_kernel_is_exact():
    conv = _conv()
    with torch.no_grad():  # W[o, c] = p[o, c] d[c]: exactly depthwise-separable
        conv.weight.copy_(torch.randn(6, 4, 1, 1) * torch.randn(1, 4, 3, 3))
    layer = DepthwiseSeparableConv2d.from_dense(conv, DepthwiseSeparableConfig())
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-4, atol=1e-5)


def test_group_conv_keeps_diagonal_blocks():
    conv, x = _conv(), torch.randn(2, 4, 5, 5)
    layer = GroupConv2d.from_dense(conv, GroupConvConfig(groups=2))
    assert layer.param_count() == 6 * 4 * 9 // 2 + 6
    mask = torch.zeros(6, 4, 1, 1)
    mask[:3, :2] = mask[3:, 2:] = 1
    torch.testing.assert_close(layer(x), F.conv2d(x, conv.weight * mask, conv.bias, padding=1))


def test_bottleneck_exact_at_full_width_and_counts():
    conv, x = _conv(8, 6), torch.randn(2, 8, 5, 5)
    full = BottleneckConv2d.from_dense(conv, BottleneckConvConfig(width_fraction=1.0))
    torch.testing.assert_close(full(x), conv(x), rtol=1e-4, atol=1e-5)
    half = BottleneckConv2d.from_dense(conv, BottleneckConvConfig(width_fraction=0.5))
    assert half.ranks == [4, 3]
    assert half.param_count() == 8 * 4 + 4 * 3 * 9 + 3 * 6 + 6


def test_compress_lenet5_skips_with_reasons_and_saves_macs():
    model = create("lenet5").eval()
    x = torch.rand(2, 1, 28, 28)
    _, report = modelzip.compress(model, GroupConvConfig(groups=2), sample=x, measure=False)
    assert [c.name for c in report.layers] == ["conv2"]
    assert "does not divide" in report.skipped[0].reason
    _, report = modelzip.compress(model, DepthwiseSeparableConfig(), sample=x, measure=False)
    assert report.after.macs < report.before.macs


def test_configs_validate():
    with pytest.raises(ConfigError, match="depth_multiplier=0"):
        DepthwiseSeparableConfig(depth_multiplier=0)
    with pytest.raises(ConfigError, match=r"width_fraction=1\.5"):
        BottleneckConvConfig(width_fraction=1.5)
    with pytest.raises(ConfigError, match="groups=0"):
        GroupConvConfig(groups=0)


def test_distillation_loss_is_hinton():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    T, a = 3.0, 0.7
    p_t = F.softmax(t / T, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean()
    want = a * T * T * kl + (1 - a) * F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, t, y, T, a), want)


def test_distill_improves_a_student(digits):
    torch.manual_seed(0)
    shape = list(digits.input_shape)
    teacher = create("lenet300", input_shape=shape, num_classes=10)
    modelzip.train.train(teacher, digits, TrainConfig(epochs=3, lr=0.1, val_size=0), progress=False)
    student = create("lenet300", input_shape=shape, num_classes=10)
    before = evaluate(student, digits)["accuracy"]
    result = distill(student, teacher, digits, TrainConfig(epochs=3, lr=0.1, val_size=0.1))
    assert evaluate(student, digits)["accuracy"] > before + 0.3
    assert len(result.history) == 3
    with pytest.raises(ConfigError, match="temperature"):
        distill(student, teacher, digits, temperature=0.0)


def test_recalibrate_batchnorm_restores_the_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    images = torch.randn(64, 1, 6, 6) * 3 + 2
    recalibrate_batchnorm(net, images, batch_size=16, batches=4)
    feats = net[0](images).detach()
    torch.testing.assert_close(net[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert net[1].momentum == 0.1 and net.training
    out = net.eval()(images)
    assert out.mean().abs() < 0.1  # normalised with the new statistics


@pytest.mark.parametrize(
    ("cls", "config", "parts"),
    [
        (DepthwiseSeparableConv2d, DepthwiseSeparableConfig(), 2),
        (GroupConv2d, GroupConvConfig(groups=2), 1),
        (BottleneckConv2d, BottleneckConvConfig(), 3),
    ],
)
def test_compact_specs_use_conv_and_old_geometry_specs_load(cls, config, parts):
    conv, x = _conv(bias=False), torch.randn(2, 4, 5, 5)
    layer = cls.from_dense(conv, config)
    spec = layer.spec()
    assert spec["conv"]["kernel_size"] == [3, 3] and spec["bias"] is False
    # The layout written before issue #19: the geometry, with the bias flag, under "geometry".
    geometry = {k: v for k, v in spec["conv"].items() if k != "groups"}
    old = {"geometry": {**geometry, "bias": False}}
    old |= {k: v for k, v in spec.items() if k not in ("conv", "padding_mode", "bias")}
    for s in (spec, old):
        again = cls.from_spec(s)
        again.load_state_dict(layer.state_dict())
        assert again.spec() == spec
        torch.testing.assert_close(again(x), layer(x))
    loads = layer.workloads("conv", (x,), layer(x))
    assert [w.name for w in loads] == [f"conv.{i}" for i in range(parts)]
