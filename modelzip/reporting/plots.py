"""The report's figures, drawn with Matplotlib (Agg, imported on first use) and returned as PNG."""

from __future__ import annotations

import io
from typing import Any

LEVEL_COLORS = {
    "mac": "#4c72b0",
    "rf": "#55a868",
    "array": "#c44e52",
    "buffer": "#8172b2",
    "dram": "#ccb974",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def pareto(
    points: list[dict[str, Any]],
    key: str,
    label: str,
    baseline: dict[str, Any] | None = None,
    log: bool = True,
) -> bytes:
    """Accuracy against ``key`` for every candidate; the Pareto front joined by a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    shown = [p for p in points if p.get(key) is not None]
    other = [p for p in shown if not p.get("pareto")]
    front = sorted((p for p in shown if p.get("pareto")), key=lambda p: p[key])
    ax.scatter(
        [p[key] for p in other],
        [p["accuracy"] for p in other],
        s=18,
        c="#999999",
        label="candidates",
    )
    ax.plot(
        [p[key] for p in front],
        [p["accuracy"] for p in front],
        "o-",
        c="#c44e52",
        label="Pareto front",
    )
    if baseline and baseline.get(key) is not None and baseline.get("accuracy") is not None:
        ax.scatter(
            [baseline[key]],
            [baseline["accuracy"]],
            marker="*",
            s=140,
            c="#4c72b0",
            label="baseline",
            zorder=3,
        )
    if log and all(p[key] > 0 for p in shown):
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def sensitivity(curves: list[dict[str, Any]], baseline_accuracy: float | None) -> bytes:
    """Accuracy against each layer's knob, one panel per knob (rank, bits, sparsity ...) and one
    line per (layer, method)."""
    plt = _pyplot()
    knobs = list(dict.fromkeys(str(c.get("knob", "")) for c in curves))
    fig, axes = plt.subplots(1, len(knobs), figsize=(4.8 * len(knobs), 3.4), squeeze=False)
    for ax, knob in zip(axes[0], knobs, strict=True):
        for c in curves:
            if str(c.get("knob", "")) == knob:
                label = f"{c['layer']} ({c['method']})"
                ax.plot(c["values"], c["accuracy"], "o-", ms=3, label=label)
        if baseline_accuracy is not None:
            ax.axhline(baseline_accuracy, ls="--", c="#555555", lw=1, label="baseline")
        ax.set_xlabel(knob or "setting")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def energy_by_level(energy: dict[str, float], unit: str) -> bytes:
    """Total energy split by memory level (MAC, register file, array, buffer, DRAM)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    levels = list(energy)
    ax.bar(
        levels, [energy[k] for k in levels], color=[LEVEL_COLORS.get(k, "#777777") for k in levels]
    )
    ax.set_ylabel(f"energy ({unit})")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def energy_by_layer(layers: list[dict[str, Any]], unit: str) -> bytes:
    """Each layer's energy, stacked by memory level."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    names = [x["name"] for x in layers]
    bottom = [0.0] * len(layers)
    levels = list(dict.fromkeys(k for x in layers for k in x["energy"]))
    for level in levels:
        values = [float(x["energy"].get(level, 0.0)) for x in layers]
        ax.bar(names, values, bottom=bottom, label=level, color=LEVEL_COLORS.get(level))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel(f"energy ({unit})")
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def dataflows(flows: list[dict[str, Any]]) -> bytes:
    """Cycles and energy of the model under each dataflow, side by side."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(5.6, 3.0))
    names = [f["dataflow"] for f in flows]
    left.bar(names, [f["cycles"] for f in flows], color="#4c72b0")
    left.set_title("cycles", fontsize=10)
    right.bar(names, [f["total_energy"] for f in flows], color="#55a868")
    right.set_title(f"energy ({flows[0].get('energy_unit', '')})", fontsize=10)
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)
