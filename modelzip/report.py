"""What :func:`modelzip.compress` did, as data: per layer and for the whole model, before and after.

Rendering (terminal tables, Markdown, HTML) lives elsewhere; a Report only holds numbers and
round-trips through JSON. Its rows, :class:`LayerChange` and :class:`SkippedLayer`, are defined in
:mod:`modelzip.core.changes` and importable from here as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Defined in core (the Context records them); imported here, where they always lived.
from modelzip.core.changes import LayerChange, SkippedLayer


@dataclasses.dataclass
class ModelStats:
    """Whole-model figures. ``None`` where not measured (no data, no sample input)."""

    params: int
    size_bytes: int
    macs: int | None = None
    effective_macs: int | None = None
    latency_ms: float | None = None
    accuracy: float | None = None
    latency_batch: int | None = None
    #: Fastest and slowest warm sample (ms) around :attr:`latency_ms` (a median).
    latency_range_ms: list[float] | None = None
    #: The first call (ms: kernel compilation, cold caches), never part of :attr:`latency_ms`.
    first_call_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
    """The result of one ``compress`` call."""

    recipe: list[dict[str, Any]]
    before: ModelStats
    after: ModelStats
    layers: list[LayerChange] = dataclasses.field(default_factory=list)
    skipped: list[SkippedLayer] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    finetune_epochs: int = 0
    #: What the deploy step did per layer (:meth:`modelzip.deploy.MaterializeReport.rows`), and
    #: a line when it did not run (no sample to measure on, or ``deploy=False``).
    deployment: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    deploy_note: str = ""

    @property
    def compression(self) -> float:
        """Size before over size after (saved bytes)."""
        return self.before.size_bytes / self.after.size_bytes if self.after.size_bytes else 0.0

    @property
    def speedup(self) -> float | None:
        """Measured latency before over after, when both were measured (``compress`` times the
        dense original and the deployed model side by side, interleaved, warm)."""
        if self.before.latency_ms and self.after.latency_ms:
            return self.before.latency_ms / self.after.latency_ms
        return None

    @property
    def mac_reduction(self) -> float | None:
        """Dense MACs before over effective MACs after (the theoretical speedup)."""
        if self.before.macs and self.after.effective_macs:
            return self.before.macs / self.after.effective_macs
        return None

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data, and the ratios (``compression``, ``speedup``,
        ``mac_reduction``)."""
        ratios = {k: getattr(self, k) for k in ("compression", "speedup", "mac_reduction")}
        return {**dataclasses.asdict(self), **ratios}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(
            recipe=list(data["recipe"]),
            before=ModelStats(**data["before"]),
            after=ModelStats(**data["after"]),
            layers=[LayerChange(**c) for c in data.get("layers", [])],
            skipped=[SkippedLayer(**s) for s in data.get("skipped", [])],
            seconds=float(data.get("seconds", 0.0)),
            finetune_epochs=int(data.get("finetune_epochs", 0)),
            deployment=list(data.get("deployment", [])),
            deploy_note=str(data.get("deploy_note", "")),
        )
