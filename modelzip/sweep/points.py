"""``points.json``: the candidates a sweep evaluated, with Pareto flags, for reports and plots.

Schema (shared with auto-compression, :func:`modelzip.joint.pareto.points_document`, and
``modelzip report``)::

    {"model": str, "dataset": str,
     "baseline": {"accuracy", "size_bytes", "macs", "latency_ms", "energy_uj"},
     "points": [{"name", "recipe", "accuracy", "size_bytes", "macs", "latency_ms",
                 "energy_uj", "pareto"}]}
"""

from __future__ import annotations

from typing import Any

from modelzip.joint import pareto

__all__ = ["pareto_flags", "points_document"]

#: True where no other point is at least as accurate and as small, and better in one (exact
#: duplicates of a front point are on the front too).
pareto_flags = pareto.pareto_mask


def points_document(
    model: str, dataset: str, baseline: dict[str, Any], points: list[dict[str, Any]]
) -> dict[str, Any]:
    """The points.json document; ``points`` carry name, recipe and the measured keys (the
    Pareto front is the one of accuracy against size)."""
    keys = ("name", "recipe", "accuracy", "size_bytes", "macs", "latency_ms", "energy_uj")
    rows = [pareto.Point(**{k: p.get(k) for k in keys}, cost=p.get("size_bytes")) for p in points]
    return pareto.points_document(model, dataset, baseline, pareto.mark_pareto(rows))
