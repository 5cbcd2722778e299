"""``points.json``: the candidates a sweep evaluated, with Pareto flags, for reports and plots.

Schema (shared with auto-compression and ``modelzip report``)::

    {"model": str, "dataset": str,
     "baseline": {"accuracy", "size_bytes", "macs", "latency_ms", "energy_uj"},
     "points": [{"name", "recipe", "accuracy", "size_bytes", "macs", "latency_ms",
                 "energy_uj", "pareto"}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelzip.core.atomic import write_json
from modelzip.joint.pareto import pareto_mask

__all__ = ["POINT_KEYS", "pareto_flags", "points_document", "write_points"]

POINT_KEYS = ("accuracy", "size_bytes", "macs", "latency_ms", "energy_uj")


def pareto_flags(accuracy: Sequence[float], size: Sequence[float]) -> list[bool]:
    """True where no other point is at least as accurate and as small, and better in one
    (exact duplicates of a front point are on the front too)."""
    return pareto_mask(accuracy, size)


def points_document(
    model: str, dataset: str, baseline: dict[str, Any], points: list[dict[str, Any]]
) -> dict[str, Any]:
    """The points.json document; ``points`` carry name, recipe and the measured keys."""
    rows = [
        {"name": p["name"], "recipe": p["recipe"], **{k: p.get(k) for k in POINT_KEYS}}
        for p in points
    ]
    flags = pareto_flags([r["accuracy"] for r in rows], [r["size_bytes"] for r in rows])
    for row, flag in zip(rows, flags, strict=True):
        row["pareto"] = flag
    return {
        "model": model,
        "dataset": dataset,
        "baseline": {k: baseline.get(k) for k in POINT_KEYS},
        "points": rows,
    }


def write_points(path: str | Path, document: dict[str, Any]) -> None:
    """Write ``points.json`` atomically."""
    write_json(path, document)
