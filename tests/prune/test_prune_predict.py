"""Before-calculation neuron pruning: exact mode never skips a positive output; the neighbour
precheck and the hashing search; meProp backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modelzip.models import create
from modelzip.prune.predict import (
    PredictedReLULayer,
    TopKGrad,
    attach_predictors,
    lsh_skip_mask,
    meprop_backward_macs,
    neighbour_skip_mask,
)


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    model = create("vgg_small", input_shape=(1, 12, 12), width=4).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.7)
    return model


@pytest.mark.parametrize(
    ("estimate", "kwargs"), [("low_precision", {"bits": 4}), ("low_rank", {"rank": 4})]
)
def test_exact_mode_has_no_false_skips_and_equals_the_model(estimate, kwargs):
    model = _vgg()
    x = torch.rand(8, 1, 12, 12)
    predicted = copy.deepcopy(model)
    layers = attach_predictors(predicted, estimate, margin=1.0, **kwargs)
    assert sorted(layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1"]
    with torch.no_grad():
        torch.testing.assert_close(predicted(x), model(x), rtol=1e-4, atol=1e-5)
    assert sum(m.false_skips for m in layers.values()) == 0
    # A margin of 0 trusts the estimate alone: it skips more.
    loose = copy.deepcopy(model)
    loose_layers = attach_predictors(loose, estimate, margin=0.0, **kwargs)
    with torch.no_grad():
        loose(x)
    assert sum(m.skipped for m in loose_layers.values()) > sum(m.skipped for m in layers.values())


def test_topk_grad_keeps_k_entries_per_sample_and_counts_macs():
    x = torch.randn(3, 10, requires_grad=True)
    TopKGrad(2)(x).backward(torch.arange(30.0).reshape(3, 10) - 15)
    assert (x.grad != 0).sum(1).tolist() == [2, 2, 2]
    assert x.grad[0].nonzero().flatten().tolist() == [0, 1]  # |-15|, |-14| are largest
    macs = meprop_backward_macs(784, 300, 30, 128)
    assert macs["saved_fraction"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="k=0"):
        TopKGrad(0)


def _check_counters(layer: PredictedReLULayer, skip: torch.Tensor, dense: torch.Tensor) -> None:
    assert layer.skipped == int(skip.sum()) <= layer.outputs == dense.numel()
    assert layer.false_skips == int((skip & (dense > 0)).sum()) <= layer.skipped
    assert layer.macs_skipped == layer.skipped * layer.fan_in
    assert layer.macs_total == layer.outputs * layer.fan_in


def _conv(bias: float) -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    nn.init.constant_(conv.bias, bias)
    return conv


def test_neighbour_mask_matches_the_enclosing_grid_cell_definition():
    s, margin = 3, 0.5
    y = torch.randn(2, 3, 8, 7)
    skip = neighbour_skip_mask(y, s, margin)
    grid = y[:, :, ::s, ::s]
    sigma = grid.flatten(2).std(-1, correction=0)
    expected = torch.zeros_like(skip)
    for i in range(8):
        for j in range(7):
            if i % s == 0 and j % s == 0:
                continue
            near = [
                (a, b)
                for a in range(0, 8, s)
                for b in range(0, 7, s)
                if abs(a - i) < s and abs(b - j) < s
            ]
            worst = torch.stack([y[:, :, a, b] for a, b in near]).amax(0)
            expected[:, :, i, j] = worst <= -margin * sigma
    assert torch.equal(skip, expected)
    assert 0 < int(skip.sum()) < skip.numel()


def test_neighbour_skips_nothing_at_a_large_margin_and_equals_conv_elsewhere():
    conv = _conv(bias=0.5)
    x = torch.randn(4, 3, 9, 9)
    layer = PredictedReLULayer(conv, estimate="neighbour", margin=100.0)
    with torch.no_grad():
        dense = conv(x)
        torch.testing.assert_close(layer(x), dense)
    assert layer.skipped == 0 and layer.false_skips == 0
    assert layer.predictor_macs == 4 * 4 * 5 * 5 * layer.fan_in  # the 5 x 5 grid, computed
    loose = PredictedReLULayer(conv, estimate="neighbour", margin=0.0)
    with torch.no_grad():
        out = loose(x)
    skip = neighbour_skip_mask(dense, 2, 0.0)
    assert loose.skipped > 0
    assert not skip[:, :, ::2, ::2].any()  # grid pixels are never skipped
    torch.testing.assert_close(out[~skip], dense[~skip])
    assert (out[skip] == 0).all()
    _check_counters(loose, skip, dense)


def test_neighbour_skips_every_non_grid_pixel_of_an_all_negative_output():
    conv = _conv(bias=-100.0)
    x = torch.rand(2, 3, 8, 8)
    layer = PredictedReLULayer(conv, estimate="neighbour", margin=0.0)
    with torch.no_grad():
        out = layer(x)
    assert layer.skipped == 2 * 4 * (64 - 16) and layer.false_skips == 0
    assert layer.macs_skipped == layer.skipped * 27
    assert torch.equal(out[:, :, ::2, ::2], conv(x)[:, :, ::2, ::2].detach())


def test_lsh_active_set_shrinks_with_more_bits_and_equals_dense_on_it():
    torch.manual_seed(0)
    fc = nn.Linear(20, 64)
    x = torch.randn(32, 20)
    with torch.no_grad():
        dense = fc(x)
    few_bits = PredictedReLULayer(fc, estimate="lsh", n_tables=32, n_bits=1)
    with torch.no_grad():
        few_bits(x)
    assert few_bits.skipped <= 0.01 * few_bits.outputs  # nearly everything collides
    many_bits = PredictedReLULayer(fc, estimate="lsh", n_tables=2, n_bits=12)
    with torch.no_grad():
        out = many_bits(x)
    skip = lsh_skip_mask(x, many_bits.projections, many_bits.weight_codes)
    assert many_bits.skipped > 0.5 * many_bits.outputs
    assert many_bits.false_skips > 0  # not exact
    torch.testing.assert_close(out[~skip], dense[~skip])
    assert (out[skip] == 0).all()
    _check_counters(many_bits, skip, dense)
    assert many_bits.predictor_macs == 32 * 2 * 12 * 20


def test_lsh_collides_exactly_when_all_signs_of_a_table_agree():
    torch.manual_seed(1)
    fc = nn.Linear(6, 10)
    layer = PredictedReLULayer(fc, estimate="lsh", n_tables=3, n_bits=2, seed=5)
    x = torch.randn(7, 6)
    r = layer.projections
    w_aug = torch.cat([fc.weight, fc.bias[:, None]], 1).detach()
    x_aug = torch.cat([x, torch.ones(7, 1)], 1)
    same = (torch.einsum("tbd,od->tbo", r, w_aug)[:, :, None] > 0) == (
        torch.einsum("tbd,nd->tbn", r, x_aug)[..., None] > 0
    )  # t, b, n, o
    expected = ~same.all(1).any(0)
    assert torch.equal(lsh_skip_mask(x, r, layer.weight_codes), expected)
    again = PredictedReLULayer(fc, estimate="lsh", n_tables=3, n_bits=2, seed=5)
    assert torch.equal(again.projections, r)  # seeded


def test_estimates_reject_the_wrong_layer_type():
    with pytest.raises(ValueError, match=r"neighbour.*Conv2d.*got Linear"):
        PredictedReLULayer(nn.Linear(4, 4), estimate="neighbour")
    with pytest.raises(ValueError, match=r"lsh.*Linear.*got Conv2d"):
        PredictedReLULayer(nn.Conv2d(1, 2, 3), estimate="lsh")
    with pytest.raises(ValueError, match="estimate='nope'"):
        PredictedReLULayer(nn.Linear(4, 4), estimate="nope")
    with pytest.raises(ValueError, match="stride_check=0"):
        PredictedReLULayer(nn.Conv2d(1, 2, 3), estimate="neighbour", stride_check=0)
    # attach_predictors leaves the layers an estimate does not apply to alone.
    assert sorted(attach_predictors(_vgg(), "neighbour")) == [f"conv{i}" for i in range(1, 6)]
    assert sorted(attach_predictors(_vgg(), "lsh")) == ["fc1"]
