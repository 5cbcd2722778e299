"""A RUN_DIR with all four JSON files, shaped as the RUN_DIR contract says, for report tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelzip.core.atomic import write_json
from modelzip.core.counting import collect_workloads
from modelzip.hardware import estimate
from modelzip.models import create


def _report() -> dict:
    layer = {"method": "magnitude_prune", "before": "Linear", "after": "MaskedLinear"}
    return {
        "recipe": [{"method": "magnitude_prune", "sparsity": 0.9}],
        "before": {
            "params": 266610,
            "size_bytes": 1066440,
            "macs": 266200,
            "effective_macs": 266200,
            "latency_ms": 0.8,
            "accuracy": 0.981,
            "latency_batch": 64,
        },
        "after": {
            "params": 26900,
            "size_bytes": 140000,
            "macs": 266200,
            "effective_macs": 26620,
            "latency_ms": 0.7,
            "accuracy": 0.975,
            "latency_batch": 64,
        },
        "compression": 7.6,
        "speedup": 1.14,
        "mac_reduction": 10.0,
        "layers": [
            {
                "name": "fc1",
                **layer,
                "params_before": 235500,
                "params_after": 23580,
                "bytes_before": 942000,
                "bytes_after": 124000,
                "note": "",
            },
            {
                "name": "fc2",
                **layer,
                "params_before": 30100,
                "params_after": 3100,
                "bytes_before": 120400,
                "bytes_after": 15000,
                "note": "",
            },
        ],
        "skipped": [{"name": "fc3", "method": "magnitude_prune", "reason": "excluded"}],
        "seconds": 1.5,
        "finetune_epochs": 0,
    }


def _points() -> dict:
    points = []
    for i, s in enumerate((0.5, 0.7, 0.8, 0.9, 0.95, 0.98)):
        points.append(
            {
                "name": f"prune-{s}",
                "recipe": [{"method": "magnitude_prune", "sparsity": s}],
                "accuracy": 0.98 - 0.1 * s**4 + (0.004 if i == 2 else 0.0),
                "size_bytes": int(1066440 * (1 - s)) + 1000,
                "macs": int(266200 * (1 - s)),
                "latency_ms": 0.8 - 0.3 * s,
                "energy_uj": 50.0 * (1 - s) + 5,
                "pareto": i != 1,
            }
        )
    baseline = {
        "accuracy": 0.981,
        "size_bytes": 1066440,
        "macs": 266200,
        "latency_ms": 0.8,
        "energy_uj": 55.0,
    }
    return {"model": "lenet300", "dataset": "mnist", "baseline": baseline, "points": points}


def _sensitivity() -> dict:
    values = [0.5, 0.7, 0.9, 0.95]
    curves = [
        {
            "layer": name,
            "method": "magnitude_prune",
            "knob": "sparsity",
            "values": values,
            "accuracy": [0.98 - k * v**6 for v in values],
        }
        for name, k in (("fc1", 0.05), ("fc2", 0.1), ("fc3", 0.4))
    ]
    return {"model": "lenet300", "dataset": "mnist", "baseline_accuracy": 0.981, "curves": curves}


def write_run_dir(
    path: Path, files: tuple[str, ...] = ("report", "points", "sensitivity", "estimate")
) -> Path:
    """Write the chosen JSON files of a synthetic RUN_DIR into ``path``."""
    if "report" in files:
        write_json(path / "report.json", _report())
    if "points" in files:
        write_json(path / "points.json", _points())
    if "sensitivity" in files:
        write_json(path / "sensitivity.json", _sensitivity())
    if "estimate" in files:
        workloads = collect_workloads(create("lenet300").eval(), torch.rand(1, 1, 28, 28))
        write_json(path / "estimate.json", estimate(workloads, "eyeriss").to_dict())
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run_dir(tmp_path / "run")


@pytest.fixture
def make_run_dir():
    """``write_run_dir`` for tests that want a subset of the files."""
    return write_run_dir
