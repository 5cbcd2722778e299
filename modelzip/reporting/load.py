"""Read what a report is made of: a RUN_DIR (any subset of its files) or a benchmark results JSON.

RUN_DIR files (all optional, see the project's RUN_DIR contract): ``report.json`` (a compress
:class:`~modelzip.report.Report`), ``points.json`` (explored candidates), ``sensitivity.json``
(per-layer curves), ``estimate.json`` (an accelerator :class:`~modelzip.hardware.Estimate`) and
``model.mzip`` (the compressed model, from which the estimate and the dataflow comparison are
computed when absent). Malformed files raise :class:`~modelzip.core.errors.DataError` naming
the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from modelzip.core.errors import DataError

DATAFLOWS = ("os", "ws", "is", "rs")


@dataclasses.dataclass
class ReportInputs:
    """Everything found for one report; ``None`` where a file was absent."""

    source: str
    report: dict[str, Any] | None = None
    points: dict[str, Any] | None = None
    sensitivity: dict[str, Any] | None = None
    estimate: dict[str, Any] | None = None
    dataflows: list[dict[str, Any]] | None = None  # one estimate summary per dataflow
    results: dict[str, Any] | None = None  # a benchmark results JSON
    model_name: str | None = None  # the zoo name recorded in model.mzip


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _need(data: Any, path: Path, field: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(field) if isinstance(data, dict) else None
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{path}: field {field!r} is missing or not a {names}")
    return value


def _check_report(data: Any, path: Path) -> dict[str, Any]:
    for side in ("before", "after"):
        stats = _need(data, path, side, dict)
        for key in ("params", "size_bytes"):
            _need(stats, path, key, (int, float))
    _need(data, path, "layers", list)
    return data


def _check_points(data: Any, path: Path) -> dict[str, Any]:
    for i, p in enumerate(_need(data, path, "points", list)):
        for key in ("accuracy", "size_bytes"):
            _need(p, Path(f"{path} points[{i}]"), key, (int, float))
    return data


def _check_sensitivity(data: Any, path: Path) -> dict[str, Any]:
    for i, c in enumerate(_need(data, path, "curves", list)):
        where = Path(f"{path} curves[{i}]")
        values, acc = _need(c, where, "values", list), _need(c, where, "accuracy", list)
        if len(values) != len(acc):
            raise DataError(f"{where}: {len(values)} values but {len(acc)} accuracies")
    return data


def _check_estimate(data: Any, path: Path) -> dict[str, Any]:
    _need(data, path, "totals", dict)
    for i, layer in enumerate(_need(data, path, "layers", list)):
        _need(layer, Path(f"{path} layers[{i}]"), "energy", dict)
    return data


def _model_estimates(path: Path, accelerator: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Estimate of the saved model on ``accelerator`` (its own dataflow) and on each dataflow."""

    from modelzip.core.counting import collect_workloads
    from modelzip.hardware import estimate
    from modelzip.models.shapes import sample_input
    from modelzip.serialize import load

    model = load(path)
    sample = sample_input(model)  # the shape it was built for (its data set's), not the zoo's
    if sample is None:
        raise DataError(f"{path}: the input shape of a model outside the zoo is unknown")
    workloads = collect_workloads(model, sample)
    default = estimate(workloads, accelerator).to_dict()
    flows = []
    for flow in DATAFLOWS:
        e = estimate(workloads, accelerator, dataflow=flow)
        flows.append(
            {
                "dataflow": flow,
                "cycles": e.cycles,
                # Without the DRAM stalls: a memory-bound model has the same cycles on every
                # dataflow (the bandwidth sets them), its compute cycles still differ.
                "compute_cycles": e.compute_cycles,
                "energy": e.energy,
                "total_energy": e.total_energy,
                "utilization": e.utilization,
                "dram_bytes": e.dram_read_bytes + e.dram_write_bytes,
                "energy_unit": e.energy_unit,
            }
        )
    return default, flows


def load_inputs(path: str | Path, accelerator: str = "eyeriss") -> ReportInputs:
    """Read a RUN_DIR or a benchmark results JSON.

    Raises
    ------
    DataError
        The path is missing, holds none of the known files, or a file is malformed.
    """
    path = Path(path)
    if path.is_file():
        data = read_json(path)
        _need(data, path, "checks", list)
        return ReportInputs(source=str(path), results=data)
    if not path.is_dir():
        raise DataError(f"no such run folder or results file: {path}")
    inputs = ReportInputs(source=str(path))
    for name, field, check in (
        ("report.json", "report", _check_report),
        ("points.json", "points", _check_points),
        ("sensitivity.json", "sensitivity", _check_sensitivity),
        ("estimate.json", "estimate", _check_estimate),
    ):
        file = path / name
        if file.is_file():
            setattr(inputs, field, check(read_json(file), file))
    model = path / "model.mzip"
    if model.is_file():
        from modelzip.serialize import read_metadata

        inputs.model_name = read_metadata(model)["source"].get("name")
        default, inputs.dataflows = _model_estimates(model, accelerator)
        if inputs.estimate is None:
            inputs.estimate = default
    if not any((inputs.report, inputs.points, inputs.sensitivity, inputs.estimate)):
        raise DataError(
            f"{path} holds none of report.json, points.json, sensitivity.json, estimate.json, "
            "model.mzip"
        )
    return inputs
