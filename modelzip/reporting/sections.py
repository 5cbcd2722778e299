"""The report's content as data — sections of text, tables and figures — shared by the HTML and
Markdown renderers so the two always hold the same tables. A section whose input is absent is
not built at all (no empty plots)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import modelzip.reporting.plots as plots
from modelzip.reporting.load import ReportInputs


@dataclasses.dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclasses.dataclass
class Figure:
    name: str  # file stem for the Markdown twin's PNG
    png: bytes
    caption: str


@dataclasses.dataclass
class Section:
    title: str
    text: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[Figure] = dataclasses.field(default_factory=list)


def _num(value: Any, fmt: str = ",") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and fmt == ",":
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return format(value, fmt)


def _model_section(r: dict[str, Any]) -> Section:
    before, after = r["before"], r["after"]
    rows = []
    for label, key, fmt in (
        ("accuracy", "accuracy", ".4f"),
        ("parameters", "params", ","),
        ("size (bytes)", "size_bytes", ","),
        ("MACs (dense)", "macs", ","),
        ("MACs (nonzero)", "effective_macs", ","),
        ("latency (ms)", "latency_ms", ".3f"),
    ):
        b, a = before.get(key), after.get(key)
        if key == "accuracy":
            change = f"{(a - b) * 100:+.2f} points" if a is not None and b is not None else "-"
        else:
            change = f"{b / a:.2f}x" if isinstance(b, (int, float)) and a else "-"
        rows.append([label, _num(b, fmt), _num(a, fmt), change])
    text = []
    steps = ", ".join(str(s.get("method", "?")) for s in r.get("recipe", []))
    if steps:
        text.append(f"Recipe: {steps}; fine-tuning epochs: {r.get('finetune_epochs', 0)}.")
    return Section(
        "Model before and after",
        text,
        [Table(["", "before", "after", "before / after"], rows, "whole model")],
    )


def _layers_section(r: dict[str, Any]) -> Section | None:
    layers, skipped = r.get("layers", []), r.get("skipped", [])
    if not layers and not skipped:
        return None
    rows = [
        [
            c["name"],
            c["method"],
            c["before"],
            c["after"],
            _num(c["params_before"]),
            _num(c["params_after"]),
            _num(c["bytes_before"]),
            _num(c["bytes_after"]),
            f"{c['bytes_before'] / c['bytes_after']:.2f}x" if c["bytes_after"] else "-",
        ]
        for c in layers
    ]
    tables = [
        Table(
            [
                "layer",
                "method",
                "before",
                "after",
                "params before",
                "params after",
                "bytes before",
                "bytes after",
                "compression",
            ],
            rows,
            "per-layer changes",
        )
    ]
    if skipped:
        tables.append(
            Table(
                ["layer", "method", "reason"],
                [[s["name"], s["method"], s["reason"]] for s in skipped],
                "skipped layers",
            )
        )
    return Section("Per-layer changes", tables=tables)


def _pareto_section(p: dict[str, Any]) -> Section:
    points, base = p["points"], p.get("baseline") or {}
    figures = [
        Figure(name, plots.pareto(points, key, label, base), f"accuracy against {label}")
        for name, key, label in (
            ("pareto_size", "size_bytes", "size (bytes)"),
            ("pareto_latency", "latency_ms", "measured latency (ms)"),
            ("pareto_energy", "energy_uj", "estimated energy (µJ)"),
        )
        if any(q.get(key) is not None for q in points)
    ]
    rows = [
        [
            q.get("name", ""),
            _num(q["accuracy"], ".4f"),
            _num(q["size_bytes"]),
            _num(q.get("macs")),
            _num(q.get("latency_ms")),
            _num(q.get("energy_uj")),
            "yes" if q.get("pareto") else "",
        ]
        for q in sorted(points, key=lambda q: q["size_bytes"])
    ]
    text = [f"{len(points)} candidates of {p.get('model', '?')} on {p.get('dataset', '?')}."]
    table = Table(
        ["candidate", "accuracy", "bytes", "MACs", "latency ms", "energy µJ", "Pareto"],
        rows,
        "candidates explored",
    )
    return Section("Pareto front", text, [table], figures)


def _sensitivity_section(s: dict[str, Any]) -> Section:
    curves = s["curves"]
    rows = [
        [
            c["layer"],
            c["method"],
            str(c.get("knob", "")),
            ", ".join(f"{v:g}" for v in c["values"]),
            ", ".join(f"{a:.3f}" for a in c["accuracy"]),
        ]
        for c in curves
    ]
    figure = Figure(
        "sensitivity", plots.sensitivity(curves, s.get("baseline_accuracy")), "per-layer curves"
    )
    return Section(
        "Sensitivity",
        [f"Baseline accuracy {_num(s.get('baseline_accuracy'), '.4f')}."],
        [Table(["layer", "method", "knob", "values", "accuracy"], rows, "sensitivity curves")],
        [figure] if curves else [],
    )


def _energy_section(e: dict[str, Any]) -> Section:
    unit = e.get("energy_unit", "")
    totals = e["totals"]
    energy = totals.get("energy") or {}
    rows = [
        [
            x["name"],
            x.get("op", ""),
            x.get("dataflow", ""),
            _num(x.get("cycles")),
            _num(sum(x["energy"].values())),
            *(_num(x["energy"].get(k)) for k in energy),
        ]
        for x in e["layers"]
    ]
    figures = []
    if energy:
        figures.append(
            Figure("energy_levels", plots.energy_by_level(energy, unit), "energy by memory level")
        )
    if e["layers"]:
        figures.append(
            Figure(
                "energy_layers",
                plots.energy_by_layer(e["layers"], unit),
                "energy by layer and level",
            )
        )
    text = [
        f"Accelerator {e.get('accelerator', '?')}: {_num(totals.get('cycles'))} cycles, "
        f"energy {_num(totals.get('total_energy'))} {unit}."
    ]
    return Section(
        "Energy on the accelerator",
        text,
        [Table(["layer", "op", "dataflow", "cycles", "energy", *energy], rows, "per-layer cost")],
        figures,
    )


def _dataflow_section(flows: list[dict[str, Any]]) -> Section:
    unit = flows[0].get("energy_unit", "")
    rows = [
        [
            f["dataflow"],
            _num(f["cycles"]),
            _num(f.get("compute_cycles", f["cycles"])),
            _num(f["total_energy"]),
            f"{f['utilization']:.1%}",
            _num(f["dram_bytes"]),
        ]
        for f in flows
    ]
    best = min(flows, key=lambda f: f["total_energy"])
    return Section(
        "Dataflow comparison",
        [f"Lowest energy: {best['dataflow']} (os/ws/is: systolic, SCALE-Sim; rs: Eyeriss)."],
        [
            Table(
                [
                    "dataflow",
                    "cycles",
                    "compute cycles",
                    f"energy ({unit})",
                    "utilization",
                    "DRAM bytes",
                ],
                rows,
                "the model under each dataflow",
            )
        ],
        [Figure("dataflows", plots.dataflows(flows), "cycles and energy by dataflow")],
    )


def _results_sections(res: dict[str, Any]) -> list[Section]:
    checks = res.get("checks", [])
    rows = [
        [
            str(c.get("name", "")),
            _num(c.get("value")),
            _num(c.get("target")),
            str(c.get("unit", "")),
            "met" if c.get("passed") else "missed",
        ]
        for c in checks
    ]
    met = sum(bool(c.get("passed")) for c in checks)
    about = [f"{met} of {len(checks)} targets met."]
    about += [f"{k}: {_cell(res[k])}" for k in ("benchmark", "date", "machine") if k in res]
    table = Table(["check", "value", "target", "unit", "result"], rows, "benchmark checks")
    sections = [Section("Checks", about, [table])]
    data_rows = [r for r in res.get("rows", []) if isinstance(r, dict)]
    if data_rows:
        # Parts of a benchmark measure different things: one table per part, with its columns.
        parts: dict[str, list[dict[str, Any]]] = {}
        for r in data_rows:
            parts.setdefault(str(r.get("part", "")), []).append(r)
        tables = []
        for part, group in parts.items():
            cols = [k for k in dict.fromkeys(k for r in group for k in r) if k != "part"]
            cells = [[_cell(r.get(c)) for c in cols] for r in group]
            tables.append(Table(cols, cells, f"part {part}" if part else "measured rows"))
        sections.append(Section("Rows", tables=tables))
    return sections


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value)
    return (
        _num(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else ("-" if value is None else str(value))
    )


def _jobs(inputs: ReportInputs) -> list[Callable[[], Section | list[Section] | None]]:
    """The section builders for what ``inputs`` holds, in the report's order."""
    jobs: list[Callable[[], Section | list[Section] | None]] = []
    if inputs.results is not None:
        jobs.append(lambda: _results_sections(inputs.results))
    if inputs.report is not None:
        jobs += [lambda: _model_section(inputs.report), lambda: _layers_section(inputs.report)]
    if inputs.points is not None and inputs.points["points"]:
        jobs.append(lambda: _pareto_section(inputs.points))
    if inputs.sensitivity is not None and inputs.sensitivity["curves"]:
        jobs.append(lambda: _sensitivity_section(inputs.sensitivity))
    if inputs.estimate is not None:
        jobs.append(lambda: _energy_section(inputs.estimate))
    if inputs.dataflows:
        jobs.append(lambda: _dataflow_section(inputs.dataflows))
    return jobs


def build_sections(inputs: ReportInputs, tick: Callable[[], None] | None = None) -> list[Section]:
    """The report's sections, in order; ``tick`` is called after each (for a progress bar)."""
    tick = tick or (lambda: None)
    sections: list[Section] = []
    for job in _jobs(inputs):
        made = job()
        sections += made if isinstance(made, list) else [made] if made is not None else []
        tick()
    return sections


def count_steps(inputs: ReportInputs) -> int:
    """How many times :func:`build_sections` will call ``tick``."""
    return len(_jobs(inputs))
