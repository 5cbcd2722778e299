"""End to end: ``modelzip compress ... --run-dir`` then ``modelzip report`` on that folder."""

from __future__ import annotations

import json
from pathlib import Path

from modelzip.cli import main
from modelzip.report import Report
from modelzip.serialize import load

RECIPE = """\
- {method: magnitude_prune, sparsity: 0.9, select: {names: [fc1]}}
- {method: int8, select: {names: [fc2, fc3]}}
"""


def test_compress_run_dir_then_report(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    run = tmp_path / "run"
    code = main(
        [
            "compress",
            "lenet300",
            "--recipe",
            str(recipe),
            "--out",
            str(run / "model.mzip"),
            "--run-dir",
            str(run),
            "--no-latency",
            "--quiet",
        ]
    )
    assert code == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress bar
    report = Report.from_dict(json.loads((run / "report.json").read_text()))
    assert [c.name for c in report.layers] == ["fc1", "fc2", "fc3"]
    assert report.after.size_bytes < report.before.size_bytes
    estimate = json.loads((run / "estimate.json").read_text())
    assert [x["name"] for x in estimate["layers"]] == ["fc1", "fc2", "fc3"]
    assert load(run / "model.mzip") is not None

    out = run / "report.html"
    assert main(["report", str(run), "--out", str(out), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["html"] == str(out) and len(written["figures"]) == 3
    html = out.read_text()
    for title in (
        "Model before and after",
        "Per-layer changes",
        "Energy on the accelerator",
        "Dataflow comparison",
    ):
        assert f"<h2>{title}</h2>" in html
    assert "lenet300" in html
    # Each dataflow was evaluated on the model: four rows with different compute cycles (batch-1
    # LeNet-300-100 is memory-bound on Eyeriss's 2.4 B/cycle, so its total cycles are the same).
    rows = [
        line
        for line in (run / "report.md").read_text().splitlines()
        if line.startswith(("| os |", "| ws |", "| is |", "| rs |"))
    ]
    assert len(rows) == 4
    assert len({r.split(" | ")[2] for r in rows}) > 1


def test_eval_quiet_shows_no_progress(capsys) -> None:
    assert main(["eval", "lenet300", "--no-latency", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "accuracy" in captured.out
