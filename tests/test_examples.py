"""The scripts in examples/ run (on their small budgets) and print what they promise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelzip.sweep import SweepConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, *args: str, timeout: float = 120) -> str:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_compress_my_model(tmp_path: Path) -> None:
    out = tmp_path / "mine.mzip"
    text = _run("compress_my_model.py", "--quick", "--out", str(out))
    assert "reloaded outputs identical: True" in text
    before, after = map(float, re.search(r"accuracy\s+([\d.]+) -> ([\d.]+)", text).groups())
    assert before > 0.8 and after > 0.8  # trained, and fine-tuned after pruning
    ratio = float(re.search(r"compression ([\d.]+)x", text).group(1))
    assert ratio > 2.0
    assert out.is_file() and out.stat().st_size < 60_000


def test_smallest_within_half_point(tmp_path: Path) -> None:
    text = _run("smallest_within_half_point.py", "--quick", "--out", str(tmp_path))
    match = re.search(r"smallest within 0.5 points: (\S+): accuracy ([\d.]+), ([\d,]+) bytes", text)
    assert match, text
    baseline = json.loads((tmp_path / "quantize" / "points.json").read_text())["baseline"]
    assert float(match.group(2)) >= baseline["accuracy"] - 0.005
    assert int(match.group(3).replace(",", "")) < baseline["size_bytes"]
    # The answer is the smallest of all candidates that qualify, from all three sweeps.
    points = [
        p
        for name in ("quantize", "prune", "prune_quantize")
        for p in json.loads((tmp_path / name / "points.json").read_text())["points"]
    ]
    good = [p for p in points if p["accuracy"] >= baseline["accuracy"] - 0.005]
    assert int(match.group(3).replace(",", "")) == min(p["size_bytes"] for p in good)


def test_estimate_on_accelerator(tmp_path: Path) -> None:
    text = _run("estimate_on_accelerator.py", "--quick", "--out", str(tmp_path))
    energies = {
        (m.group(1), m.group(2)): float(m.group(3))
        for m in re.finditer(r"^(\w+)\s+(dense|4-bit)\s+[\d,]+\s+([\d.e+]+)", text, re.M)
    }
    assert len(energies) == 6
    for accelerator in ("bitfusion", "tpu", "eyeriss"):  # fewer bits moved, less energy
        assert energies[(accelerator, "4-bit")] < energies[(accelerator, "dense")]
    estimate = json.loads((tmp_path / "estimate.json").read_text())
    assert estimate["accelerator"] and estimate["layers"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_sweep_files_are_valid(path: Path) -> None:
    config = SweepConfig.load(path)
    assert len(config.points()) >= 2
