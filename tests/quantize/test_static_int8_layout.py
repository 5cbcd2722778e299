"""A static int8 conv gives its float output in its input's memory layout: oneDNN writes
channels-last whatever it reads, and a model that ``.view``s an NCHW output failed on it (a wild
VGG deployed with one such layer crashed while its candidates were timed)."""

from __future__ import annotations

import torch
from torch import nn

import modelzip
from modelzip.quantize.int8_method import Int8Config


class ViewNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(y.view(y.size(0), -1))  # needs an NCHW-contiguous tensor


def test_static_int8_conv_output_follows_the_input_layout() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    model, _ = modelzip.compress(ViewNet().eval(), Int8Config(activations="static"), sample=x,
                                 deploy=False, measure=False, evaluate=False)  # fmt: skip
    conv = model.conv2
    h = torch.randn(4, 8, 8, 8)
    with torch.inference_mode():
        assert conv(h).is_contiguous()
        nhwc = h.contiguous(memory_format=torch.channels_last)
        assert conv(nhwc).is_contiguous(memory_format=torch.channels_last)
        model(x)  # the .view works
    # A model deployed channels-last keeps that layout from its first conv on.
    conv.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert conv(h).is_contiguous(memory_format=torch.channels_last)
    deployed, _ = modelzip.compress(ViewNet().eval(), Int8Config(activations="static"), sample=x,
                                    measure=False, evaluate=False)  # fmt: skip
    with torch.inference_mode():
        assert deployed(x).shape == (4, 4)
