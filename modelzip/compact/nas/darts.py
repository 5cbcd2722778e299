"""Cell-based differentiable search (DARTS, Liu, Simonyan & Yang, ICLR 2019), first order.

A cell has one input node and ``nodes`` intermediate nodes; node ``j`` sums a *mixed op* on every
edge from the earlier nodes, ``o(x) = sum_k softmax(α)_k op_k(x)``; the cell outputs the
1x1-projected concatenation of its intermediate nodes. Normal cells keep the resolution,
reduction cells halve it (their input edges have stride 2). Network weights ``w`` are trained on
one half of the training data and the architecture ``α`` on the other, alternately (the
first-order approximation of the bilevel problem). The discrete cell keeps, for each node, the
two strongest incoming edges by their best non-``none`` op.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelzip.compact.cnn_blocks import SeparableBlock, conv_bn_relu
from modelzip.compact.nas.space import make_op
from modelzip.data.dataset import Dataset
from modelzip.models.common import Normalize
from modelzip.train import evaluate, lr_factor

__all__ = ["DARTS_OPS", "DartsResult", "DartsSupernet", "build_genotype", "darts_search"]

DARTS_OPS = ("none", "skip", "sep3", "sep5", "dil3", "max3", "avg3")


def _op(name: str, c: int, stride: int) -> nn.Module:
    if name == "none":
        return _Zero(stride)
    if name == "max3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name in ("sep3", "sep5"):
        return SeparableBlock(c, c, stride, int(name[-1]))
    return make_op(name, c, c, stride)


class _Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[..., :: self.stride, :: self.stride] * 0.0


def _edges(nodes: int) -> list[tuple[int, int]]:
    """(source, target) pairs; node 0 is the cell input, targets 1..nodes."""
    return [(i, j) for j in range(1, nodes + 1) for i in range(j)]


class _Cell(nn.Module):
    """A cell whose edges are mixed ops (``genotype`` None) or the discrete ops of a genotype."""

    def __init__(
        self, c_in: int, c: int, reduce: bool, nodes: int, genotype: list | None = None
    ) -> None:
        super().__init__()
        self.pre = conv_bn_relu(c_in, c, 1)
        self.nodes, self.reduce = nodes, reduce
        self.edges = _edges(nodes)
        stride = lambda i: 2 if reduce and i == 0 else 1  # noqa: E731
        if genotype is None:
            self.ops = nn.ModuleList(
                nn.ModuleList(_op(o, c, stride(i)) for o in DARTS_OPS) for i, _ in self.edges
            )
            self.keep = None
        else:
            kept = {(i, j): o for i, j, o in genotype}
            self.keep = [(i, j) in kept for i, j in self.edges]
            self.ops = nn.ModuleList(
                _op(kept[(i, j)], c, stride(i)) if (i, j) in kept else nn.Identity()
                for i, j in self.edges
            )
        self.post = conv_bn_relu(nodes * c, c, 1)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        states = [self.pre(x)]
        for j in range(1, self.nodes + 1):
            total = 0
            for k, (i, jj) in enumerate(self.edges):
                if jj != j:
                    continue
                if weights is not None:
                    total = total + sum(
                        w * op(states[i]) for w, op in zip(weights[k], self.ops[k], strict=True)
                    )
                elif self.keep[k]:
                    total = total + self.ops[k](states[i])
            if isinstance(total, int):  # a node without kept inputs
                total = states[0][..., :: 2 if self.reduce else 1, :: 2 if self.reduce else 1] * 0
            states.append(total)
        return self.post(torch.cat(states[1:], dim=1))


class DartsSupernet(nn.Module):
    """Stem -> normal, reduction, normal, reduction cells -> pool -> fc, with shared ``α``
    (``alpha_normal``, ``alpha_reduce``: one row of ``len(DARTS_OPS)`` logits per edge)."""

    def __init__(
        self,
        width: int = 8,
        nodes: int = 2,
        num_classes: int = 10,
        in_channels: int = 1,
        genotype: dict[str, list] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.stem = conv_bn_relu(in_channels, width, 3)
        plan = [(width, False), (2 * width, True), (2 * width, False), (4 * width, True)]
        cells, c_prev = [], width
        for c, reduce in plan:
            geno = None if genotype is None else genotype["reduce" if reduce else "normal"]
            cells.append(_Cell(c_prev, c, reduce, nodes, geno))
            c_prev = c
        self.cells = nn.ModuleList(cells)
        self.fc = nn.Linear(c_prev, num_classes)
        self.discrete = genotype is not None
        n_edges = len(_edges(nodes))
        if not self.discrete:
            self.alpha_normal = nn.Parameter(1e-3 * torch.randn(n_edges, len(DARTS_OPS)))
            self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(n_edges, len(DARTS_OPS)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [] if self.discrete else [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(self.normalize(x))
        for cell in self.cells:
            if self.discrete:
                x = cell(x)
            else:
                alpha = self.alpha_reduce if cell.reduce else self.alpha_normal
                x = cell(x, F.softmax(alpha, dim=-1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def genotype(self, keep: int = 2) -> dict[str, list]:
        """Discrete cells: per node the ``keep`` edges whose best non-``none`` op is strongest."""
        out: dict[str, list] = {}
        nodes = self.cells[0].nodes
        for kind, alpha in (("normal", self.alpha_normal), ("reduce", self.alpha_reduce)):
            w = F.softmax(alpha.detach(), dim=-1)[:, 1:]  # drop "none"
            cell = []
            for j in range(1, nodes + 1):
                cands = [(k, i) for k, (i, jj) in enumerate(_edges(nodes)) if jj == j]
                cands.sort(key=lambda c: -float(w[c[0]].max()))
                for k, i in cands[:keep]:
                    cell.append([i, j, DARTS_OPS[1 + int(w[k].argmax())]])
            out[kind] = cell
        return out


def build_genotype(genotype: dict[str, list], width: int = 8, nodes: int = 2) -> DartsSupernet:
    """The discrete network of a genotype (train it from scratch)."""
    return DartsSupernet(width, nodes, genotype=genotype)


@dataclasses.dataclass
class DartsResult:
    genotype: dict[str, list]
    alphas: dict[str, list]
    history: list[dict[str, float]]


def darts_search(
    data: Dataset,
    *,
    epochs: int = 2,
    width: int = 8,
    nodes: int = 2,
    batch_size: int = 64,
    train_size: int = 10_000,
    lr: float = 0.05,
    arch_lr: float = 3e-3,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    callback: Callable[[dict[str, float]], Any] | None = None,
    device: str = "cpu",
) -> DartsResult:
    """First-order DARTS on ``train_size`` training images (half for ``w``, half for ``α``).

    A ``checkpoint`` (torch file of weights, ``α``, optimizer states and history) is written after
    each epoch and resumed from when it exists; ``callback(record)`` runs after each epoch.
    The supernet trains on ``device``.
    """
    torch.manual_seed(seed)
    net = DartsSupernet(width, nodes, data.num_classes, data.input_shape[0]).to(device)
    (x, y), (xv, yv) = data.split(1000, seed=0)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen)[:train_size]
    half = len(idx) // 2
    xw, yw, xa, ya = (
        t.to(device) for t in (x[idx[:half]], y[idx[:half]], x[idx[half:]], y[idx[half:]])
    )
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(
        net.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3
    )
    steps = max(half // batch_size, 1)
    history: list[dict[str, float]] = []
    start_epoch = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=True, map_location=device)
        net.load_state_dict(state["net"])
        w_opt.load_state_dict(state["w_opt"])
        a_opt.load_state_dict(state["a_opt"])
        gen.set_state(state["gen"].cpu())
        history, start_epoch = state["history_tensor"].tolist(), int(state["epoch"])
        history = [{"epoch": e, "val_accuracy": a} for e, a in history]
    for epoch in range(start_epoch, epochs):
        net.train()
        pw, pa = torch.randperm(half, generator=gen), torch.randperm(len(xa), generator=gen)
        for s in range(steps):
            for g in w_opt.param_groups:
                g["lr"] = lr * lr_factor("cosine", epoch * steps + s, epochs * steps)
            bi, ba = (
                pw[s * batch_size : (s + 1) * batch_size],
                pa[s * batch_size : (s + 1) * batch_size],
            )
            a_opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xa[ba]), ya[ba]).backward()
            a_opt.step()
            w_opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xw[bi]), yw[bi]).backward()
            nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
            w_opt.step()
        acc = evaluate(net, data, (xv, yv))["accuracy"]
        history.append({"epoch": float(epoch + 1), "val_accuracy": acc})
        if path is not None:
            hist = torch.tensor([[h["epoch"], h["val_accuracy"]] for h in history])
            state = {"net": net.state_dict(), "w_opt": w_opt.state_dict(),
                     "a_opt": a_opt.state_dict(), "gen": gen.get_state(),
                     "history_tensor": hist, "epoch": torch.tensor(epoch + 1)}  # fmt: skip
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(path)
        if callback is not None:
            callback(history[-1])
    alphas = {
        "normal": F.softmax(net.alpha_normal.detach(), -1).tolist(),
        "reduce": F.softmax(net.alpha_reduce.detach(), -1).tolist(),
    }
    return DartsResult(net.genotype(), alphas, history)


def genotype_summary(genotype: dict[str, Any]) -> str:
    """``normal: 0->1 sep3, ...; reduce: ...`` for tables."""
    return "; ".join(
        f"{kind}: " + ", ".join(f"{i}->{j} {o}" for i, j, o in cell)
        for kind, cell in OrderedDict(genotype).items()
    )
