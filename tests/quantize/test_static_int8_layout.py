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


def _static_viewnet() -> tuple[torch.Tensor, nn.Module]:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    model, _ = modelzip.compress(ViewNet().eval(), Int8Config(activations="static"), sample=x,
                                 deploy=False, measure=False, evaluate=False)  # fmt: skip
    return x, model


def test_static_int8_conv_output_follows_the_input_layout() -> None:
    x, model = _static_viewnet()
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


def test_each_input_shape_gets_its_own_prepacked_conv_weight(monkeypatch) -> None:
    """PyTorch's oneDNN int8 conv keeps the primitive of a weight's first call only; a layer
    deployed on one batch size and run on another rebuilt it at every call. Each input shape
    (up to PACKED_KEYS of them) gets its own prepacked weight, with the same outputs."""
    from modelzip.kernels import int8 as int8_kernels

    monkeypatch.setattr(int8_kernels, "PACKED_KEYS", 3)
    _, model = _static_viewnet()
    conv = model.conv2
    h = torch.randn(6, 8, 8, 8)
    conv.__dict__.pop("_engine_cache", None)  # compress has called it already
    with torch.inference_mode():
        first = [conv(h[:n]) for n in (6, 2, 3, 5)]  # 4 shapes: the last shares the first pack
        again = [conv(h[:n]) for n in (6, 2, 3, 5)]
    packs = conv.__dict__["_engine_cache"][4]
    assert len(packs) == 4 and len({id(p) for p in packs.values()}) == 3
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert torch.allclose(first[0][:2], first[1], atol=1e-6)  # same layer, batch-independent
