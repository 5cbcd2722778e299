"""Explored candidates and their Pareto front (accuracy up, cost down), as data and as a plot.

A :class:`Point` is one candidate of automatic compression or of a sweep: its recipe, accuracy and
costs. ``points.json`` of a run directory is :func:`points_document`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COST_KEYS = ("size_bytes", "macs", "latency_ms", "energy_uj")


@dataclasses.dataclass
class Point:
    """One explored candidate; ``cost`` is the value of the budget's kind that ranked it."""

    name: str
    recipe: list[dict[str, Any]]
    accuracy: float
    size_bytes: int
    macs: int
    cost: float
    latency_ms: float | None = None
    energy_uj: float | None = None
    pareto: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``cost``, a copy of the column of the budget's kind."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "cost"}


def pareto_mask(accuracy: Sequence[float], cost: Sequence[float]) -> list[bool]:
    """Which points no other point dominates (at least as accurate and as cheap, better in one).

    Sorting by cost, then by accuracy descending, and keeping each point more accurate than every
    cheaper one is the standard O(n log n) sweep; equal points are all kept.
    """
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -accuracy[i]))
    mask = [False] * len(cost)
    best = float("-inf")
    best_cost = None
    for i in order:
        if accuracy[i] > best or (accuracy[i] == best and cost[i] == best_cost):
            mask[i] = True
            best, best_cost = accuracy[i], cost[i]
    return mask


def mark_pareto(points: list[Point]) -> list[Point]:
    """Set each point's ``pareto`` flag (in place) and return the points."""
    mask = pareto_mask([p.accuracy for p in points], [p.cost for p in points])
    for p, m in zip(points, mask, strict=True):
        p.pareto = m
    return points


def points_document(
    model: str, dataset: str, baseline: dict[str, Any], points: list[Point]
) -> dict[str, Any]:
    """The run directory's ``points.json``."""
    return {
        "model": model,
        "dataset": dataset,
        "baseline": {k: baseline.get(k) for k in ("accuracy", *COST_KEYS)},
        "points": [p.to_dict() for p in points],
    }


def plot_pareto(
    points: list[Point],
    path: str | Path,
    *,
    cost_label: str,
    limit: float | None = None,
    baseline: tuple[float, float] | None = None,
    chosen: Point | None = None,
    title: str = "",
) -> Path:
    """Accuracy against cost of every point, the front joined, the budget as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modelzip.core.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(
        [p.cost for p in points], [100 * p.accuracy for p in points], s=12, c="tab:blue",
        alpha=0.5, label="explored",
    )  # fmt: skip
    front = sorted((p for p in points if p.pareto), key=lambda p: p.cost)
    ax.plot(
        [p.cost for p in front], [100 * p.accuracy for p in front], "-o", c="tab:orange",
        ms=4, label="Pareto front",
    )  # fmt: skip
    if limit is not None:
        ax.axvline(limit, color="red", linestyle="--", label="budget")
    if baseline is not None:
        ax.scatter(
            [baseline[0]], [100 * baseline[1]], marker="*", s=120, c="black", label="baseline"
        )
    if chosen is not None:
        ax.scatter([chosen.cost], [100 * chosen.accuracy], marker="D", s=50, c="green",
                   label="chosen (fine-tuned)")  # fmt: skip
    ax.set_xlabel(cost_label)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize="small")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
