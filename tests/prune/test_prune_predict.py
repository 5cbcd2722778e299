"""Before-calculation neuron pruning: exact mode never skips a positive output; meProp backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modelzip.models import create
from modelzip.prune.predict import TopKGrad, attach_predictors, meprop_backward_macs


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
