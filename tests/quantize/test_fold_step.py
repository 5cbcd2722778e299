"""The fold_bn recipe step: exact where the BN follows its layer, refused where it does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.errors import ModelError
from modelzip.quantize.fold import FoldBNConfig


class PreActivation(nn.Module):
    """Defines conv then bn, but applies bn first: definition order is not the data flow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.bn(x)))


def _stats(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_sequential_fold_is_exact_and_removes_bn():
    torch.manual_seed(0)
    model = _stats(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    x = torch.rand(2, 3, 8, 8)
    small, report = modelzip.compress(model, FoldBNConfig(), sample=x, measure=False)
    assert isinstance(small[1], nn.Identity)
    assert [c.name for c in report.layers] == ["0", "1"]
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_wrong_order_is_refused_and_nothing_changes():
    torch.manual_seed(0)
    model = _stats(PreActivation())
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ModelError, match="bn"):
        modelzip.compress(model, FoldBNConfig(), sample=x, measure=False, inplace=True)
    assert isinstance(model.bn, nn.BatchNorm2d) and model.conv.bias is not None
    # without a sample only Sequential containers are folded: nothing here
    _, report = modelzip.compress(model, FoldBNConfig(), measure=False)
    assert report.layers == []
