"""Architectures nobody on this project wrote, re-typed from their papers at toy widths.

* ``resnet``: He et al., "Deep Residual Learning" (2016), torchvision's layout: BasicBlock with a
  1x1 strided downsample on the shortcut when the shape changes, stem conv + max-pool, adaptive
  average pool, ``torch.flatten`` and a linear classifier.
* ``mobilenet_v2``: Sandler et al., "MobileNetV2" (2018): inverted residuals (1x1 expansion,
  3x3 depthwise, linear 1x1 projection), ReLU6, identity shortcut only when stride 1 and the
  channels match.
* ``vgg``: Simonyan & Zisserman (2015), configuration "A" shape at 1/16 width: 3x3 conv stacks
  with BN, max-pools, ``x.view(x.size(0), -1)``, classifier with dropout.
* ``torch_transformer``: ``nn.TransformerEncoderLayer`` (Vaswani et al. 2017) on token
  embeddings; ``handmade_transformer``: the same block from functional ops (``F.softmax``,
  ``@``, ``F.gelu``, ``F.layer_norm``) on ``nn.Linear`` projections.
* ``functional_shared``: two branches joined by ``torch.cat``, ``F.relu``, ``x.flatten``, and
  one ``nn.Linear`` applied twice (a shared module).

Each factory takes keyword arguments only, so the tests build them with
``resolve_model("wild_models:NAME")`` and the files record how to rebuild them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.models import model_factory


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (8, 16), blocks: int = 2, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        layers, inplanes = [], widths[0]
        for i, w in enumerate(widths):
            stage = [BasicBlock(inplanes, w, 1 if i == 0 else 2)]
            stage += [BasicBlock(w, w) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
            inplanes = w
        self.layer1, self.layer2 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, stride s), the paper's Table 2 at toy size
    SETTING = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2))

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        ]
        inp = 8
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(
            nn.Sequential(nn.Conv2d(inp, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class VGG(nn.Module):
    CFG = (4, "M", 8, "M", 16, 16, "M")

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        inp = 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(inp, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                inp = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(16 * 2 * 2, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class TorchTransformer(nn.Module):
    def __init__(self, vocab: int = 20, d_model: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.encoder = nn.TransformerEncoderLayer(
            d_model, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class HandmadeBlock(nn.Module):
    """Pre-norm self-attention and feed-forward, from functional ops."""

    def __init__(self, d_model: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ff1 = nn.Linear(d_model, 2 * d_model)
        self.ff2 = nn.Linear(2 * d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        attn = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(
            F.gelu(self.ff1(F.layer_norm(x, (d,), self.norm2.weight, self.norm2.bias)))
        )


class HandmadeTransformer(nn.Module):
    def __init__(self, vocab: int = 20, d_model: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.block = HandmadeBlock(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(tokens))[:, 0])


class FunctionalShared(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 6, 3, padding=1)
        self.right = nn.Conv2d(3, 6, 1)
        self.shared = nn.Linear(12 * 4 * 4, 12 * 4 * 4)  # applied twice
        self.out = nn.Linear(12 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], dim=1)
        x = F.max_pool2d(x, 4).flatten(1)
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.out(x)


@model_factory
def resnet() -> nn.Module:
    return ResNet()


@model_factory
def mobilenet_v2() -> nn.Module:
    return MobileNetV2()


@model_factory
def vgg() -> nn.Module:
    return VGG()


@model_factory
def torch_transformer() -> nn.Module:
    return TorchTransformer()


@model_factory
def handmade_transformer() -> nn.Module:
    return HandmadeTransformer()


@model_factory
def functional_shared() -> nn.Module:
    return FunctionalShared()


#: factory name -> an input batch of the right shape
INPUTS = {
    "resnet": lambda: torch.rand(2, 3, 16, 16),
    "mobilenet_v2": lambda: torch.rand(2, 3, 16, 16),
    "vgg": lambda: torch.rand(2, 3, 16, 16),
    "torch_transformer": lambda: torch.randint(0, 20, (2, 7)),
    "handmade_transformer": lambda: torch.randint(0, 20, (2, 7)),
    "functional_shared": lambda: torch.rand(2, 3, 16, 16),
}
