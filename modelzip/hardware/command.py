"""The backend of ``modelzip estimate``: arguments in, a JSON-able result and a text table out.

``cli_estimate`` resolves the accelerator (a preset, a spec YAML, or a SCALE-Sim ``.cfg``) and the
layers (given workloads, or a SCALE-Sim topology CSV), runs :func:`estimate` and returns
``Estimate.to_dict()`` with the printable rows and the roofline added. The CLI (``modelzip/cli.py``)
only parses arguments, asks :func:`needs_model` whether to build workloads from a model, and prints.
Exactly one layer source is given: a model (or a topology ``.csv`` in its place) or ``--topology``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelzip.core.errors import ConfigError
from modelzip.core.workload import Workload
from modelzip.hardware.estimate import estimate
from modelzip.hardware.presets import get_accelerator
from modelzip.hardware.roofline import roofline
from modelzip.hardware.scalesim_io import spec_from_scalesim_cfg, workloads_from_topology_csv


def _two_sources(model: str, topology: str) -> ConfigError:
    return ConfigError(
        f"estimate takes a model or --topology FILE, not both (got {model!r} and "
        f"--topology {topology!r})"
    )


def needs_model(model: str | None, topology: str | None) -> bool:
    """Whether ``modelzip estimate``'s layers come from a model the CLI must load.

    Exactly one of ``model`` (a model, or a SCALE-Sim topology ``.csv`` in its place) and
    ``topology`` must be given; otherwise a :class:`ConfigError` says so in one line.
    """
    if model and topology:
        raise _two_sources(model, topology)
    if not model and not topology:
        raise ConfigError("estimate needs a model or --topology FILE (a SCALE-Sim topology .csv)")
    return bool(model) and Path(str(model)).suffix != ".csv"


def cli_estimate(
    args: Mapping[str, Any] | Any, workloads: Sequence[Workload] | None = None
) -> dict[str, Any]:
    """Run ``modelzip estimate`` from parsed arguments (a dict or an argparse namespace).

    Recognised keys: ``model_or_file`` (a topology ``.csv`` when no workloads are given),
    ``accelerator`` (default ``"eyeriss"``), ``dataflow``, ``topology``, ``scalesim_config``
    (overrides ``accelerator``), ``search`` (``"energy"`` / ``"latency"``). ``topology`` together
    with a model or workloads is a :class:`ConfigError`.
    """
    get = args.get if isinstance(args, Mapping) else lambda k, d=None: getattr(args, k, d)
    if get("scalesim_config"):
        spec = spec_from_scalesim_cfg(get("scalesim_config"))
    else:
        spec = get_accelerator(get("accelerator") or "eyeriss")
    topology = get("topology")
    source = get("model_or_file")
    if topology and (source or workloads is not None):
        raise _two_sources(source or "given workloads", topology)
    if topology:
        layers = workloads_from_topology_csv(topology)
    elif workloads is not None:
        layers = list(workloads)
    elif source and Path(str(source)).suffix == ".csv":
        layers = workloads_from_topology_csv(source)
    else:
        raise ConfigError(
            "estimate needs layers: a model (the CLI turns it into workloads), --topology "
            "layers.csv, or a .csv file as MODEL_OR_FILE"
        )
    opts = {"search": get("search")} if get("search") else {}
    est = estimate(layers, spec, get("dataflow"), **opts)
    out = est.to_dict()
    out["dataflow"] = get("dataflow") or spec.dataflow
    out["table"] = est.table_rows()
    out["roofline"] = [dataclasses.asdict(p) for p in roofline(est, spec)]
    return out


def render_table(result: Mapping[str, Any]) -> str:
    """Plain-text table of ``cli_estimate``'s rows, with the energy unit in the header."""
    rows = result["table"]
    if not rows:
        return "(no layers)"
    unit = result["energy_unit"]
    headers = list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    body = [[cell(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    totals = result["totals"]
    lines = [
        f"{result['accelerator']}: energy in {unit}, area {totals['area_mm2']['total']:.3g} mm^2, "
        f"latency {totals['latency_s'] * 1e3:.4g} ms",
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)
