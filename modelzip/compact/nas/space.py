"""Search spaces built from the compact blocks; an architecture is plain JSON data.

Two spaces share one interface (``sample``, ``mutate``, ``build``, ``key``):

* :class:`BlockSpace`, full-network search (Real et al. 2019's search, MnasNet's blocks):
  a 3x3 stem of stride 2, three stages (14, 7, 4 pixels for MNIST) of ``blocks_per_stage``
  blocks, each block one op of :data:`OPS`, each stage a width from ``widths[i]``; global pool;
  fc.
* :class:`HierarchicalSpace` (Liu et al., ICLR 2018): level-1 ops, a level-2 *motif* (a small DAG
  whose edges are level-1 ops, nodes summed), and the level-3 network repeating the motif
  between strided reductions.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from modelzip.compact.cnn_blocks import (
    DilatedConv2d,
    FireModule,
    InvertedResidual,
    SeparableBlock,
    conv_bn_relu,
)
from modelzip.models.common import Normalize

__all__ = ["OPS", "BlockSpace", "HierarchicalSpace", "arch_key", "make_op"]

Arch = dict[str, Any]

#: Level-1 operations ``(c_in, c_out, stride) -> module``.
OPS = ("conv3", "sep3", "sep5", "ir3", "ir5", "dil3", "fire", "skip")


def make_op(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """The block ``name`` of :data:`OPS` mapping ``c_in`` to ``c_out`` channels at ``stride``."""
    if name == "conv3":
        return conv_bn_relu(c_in, c_out, 3, stride)
    if name in ("sep3", "sep5"):
        return SeparableBlock(c_in, c_out, stride, int(name[-1]))
    if name in ("ir3", "ir5"):
        return InvertedResidual(c_in, c_out, stride, expansion=3, kernel_size=int(name[-1]))
    if name == "dil3":
        conv = DilatedConv2d(c_in, c_out, 3, 2, stride=stride, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
    if name == "fire":
        fire = FireModule(c_in, max(1, c_out // 4), c_out // 2)
        return nn.Sequential(fire, nn.MaxPool2d(2)) if stride == 2 else fire
    if name == "skip":
        if stride == 1 and c_in == c_out:
            return nn.Identity()
        return conv_bn_relu(c_in, c_out, 1, stride, relu=False)
    raise ValueError(f"unknown op {name!r}; choose one of {list(OPS)}")


def arch_key(arch: Arch) -> str:
    """A canonical string of ``arch`` (for de-duplication and seeds)."""
    return json.dumps(arch, sort_keys=True)


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _network(stem: int, stages: list[nn.Module], c_last: int, shape, classes) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            normalize=Normalize(),
            stem=conv_bn_relu(shape[0], stem, 3, stride=2),
            stages=nn.Sequential(*stages),
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(c_last, classes),
        )
    )


class _OpsAndWidths:
    """``sample`` and ``mutate`` of a space whose architecture is an op for each of ``slots``
    slots (under ``slot_key``) and a width for each stage (under ``"widths"``)."""

    slot_key: ClassVar[str]
    ops: list[str]
    widths: list[list[int]]

    @property
    def slots(self) -> int:
        raise NotImplementedError

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random architecture."""
        return {
            self.slot_key: [rng.choice(self.ops) for _ in range(self.slots)],
            "widths": [rng.choice(w) for w in self.widths],
        }

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Change one slot's op or one stage's width (always to a different value)."""
        key = self.slot_key
        child = {key: list(arch[key]), "widths": list(arch["widths"])}
        if rng.random() < 0.75:
            i = rng.randrange(self.slots)
            child[key][i] = rng.choice([o for o in self.ops if o != arch[key][i]])
        else:
            i = rng.randrange(len(self.widths))
            child["widths"][i] = rng.choice([w for w in self.widths[i] if w != arch["widths"][i]])
        return child


class BlockSpace(_OpsAndWidths):
    """Full-network space (module docstring). An architecture is
    ``{"ops": [op per block], "widths": [width per stage]}``."""

    slot_key = "ops"

    def __init__(
        self,
        blocks_per_stage: int = 2,
        widths: Sequence[Sequence[int]] = ((8, 12, 16, 24), (16, 24, 32, 48), (24, 32, 48, 64)),
        ops: Sequence[str] = OPS,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
    ) -> None:
        unknown = sorted(set(ops) - set(OPS))
        if unknown:
            raise ValueError(f"unknown op {unknown[0]!r}; choose from {list(OPS)}")
        if blocks_per_stage < 1 or len(widths) < 1:
            raise ValueError("need at least one stage and one block per stage")
        self.blocks_per_stage = blocks_per_stage
        self.widths = [list(w) for w in widths]
        self.ops = list(ops)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    @property
    def num_blocks(self) -> int:
        return self.blocks_per_stage * len(self.widths)

    slots = num_blocks

    def build(self, arch: Arch) -> nn.Sequential:
        """The network of ``arch``: the first block of each stage after the first has stride 2;
        later blocks of a stage get a residual connection."""
        stages: list[nn.Module] = []
        c = arch["widths"][0]
        for s, width in enumerate(arch["widths"]):
            blocks = []
            for b in range(self.blocks_per_stage):
                op = arch["ops"][s * self.blocks_per_stage + b]
                stride = 2 if (b == 0 and s > 0) else 1
                block = make_op(op, c, width, stride)
                if stride == 1 and c == width and op != "skip":
                    block = _Residual(block)
                blocks.append(block)
                c = width
            stages.append(nn.Sequential(*blocks))
        return _network(arch["widths"][0], stages, c, self.input_shape, self.num_classes)


class _Motif(nn.Module):
    """A DAG over ``nodes`` nodes: node ``j`` sums op(edge i->j) of every earlier node ``i``;
    the output is the last node. Edge ops are level-1 ops (``"none"`` drops the edge)."""

    def __init__(self, edges: Sequence[str], nodes: int, c: int) -> None:
        super().__init__()
        self.pairs = [(i, j) for j in range(1, nodes) for i in range(j)]
        self.nodes = nodes
        self.ops = nn.ModuleList(
            nn.Identity() if e == "none" else make_op(e, c, c, 1) for e in edges
        )
        self.used = [e != "none" for e in edges]

    def forward(self, x: Tensor) -> Tensor:
        values = [x]
        for j in range(1, self.nodes):
            total = torch.zeros_like(x)
            for k, (i, jj) in enumerate(self.pairs):
                if jj == j and self.used[k]:
                    total = total + self.ops[k](values[i])
            values.append(total)
        return values[-1] + x  # the motif is residual, so an all-"none" motif is the identity


class HierarchicalSpace(_OpsAndWidths):
    """Hierarchical space (module docstring). An architecture is
    ``{"motif": [op per DAG edge], "widths": [width per stage]}``: the same motif (level 2) is
    used in every stage of the network (level 3), stages joined by strided 1x1 reductions."""

    slot_key = "motif"

    def __init__(
        self,
        nodes: int = 3,
        ops: Sequence[str] = ("none", "skip", "conv3", "sep3", "dil3", "ir3"),
        widths: Sequence[Sequence[int]] = ((8, 16), (16, 32), (32, 48)),
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
    ) -> None:
        unknown = sorted(set(ops) - set(OPS) - {"none"})
        if unknown:
            raise ValueError(f"unknown op {unknown[0]!r}; choose from {[*OPS, 'none']}")
        self.nodes, self.ops = nodes, list(ops)
        self.widths = [list(w) for w in widths]
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    @property
    def num_edges(self) -> int:
        return self.nodes * (self.nodes - 1) // 2

    slots = num_edges

    def build(self, arch: Arch) -> nn.Sequential:
        stages: list[nn.Module] = []
        c = arch["widths"][0]
        for s, width in enumerate(arch["widths"]):
            reduce = conv_bn_relu(c, width, 1, 2 if s > 0 else 1)
            stages.append(nn.Sequential(reduce, _Motif(arch["motif"], self.nodes, width)))
            c = width
        return _network(arch["widths"][0], stages, c, self.input_shape, self.num_classes)
