"""Reports from a RUN_DIR or a results JSON: HTML and its Markdown twin, sections, errors."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from modelzip.cli import main
from modelzip.core.errors import DataError
from modelzip.reporting import load_inputs, write_report

ALL_SECTIONS = (
    "Model before and after",
    "Per-layer changes",
    "Pareto front",
    "Sensitivity",
    "Energy on the accelerator",
)


class _Tables(HTMLParser):
    """Rows of every <table> (cell texts), the <h2> titles and the <img> sources."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.titles: list[str] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_h2:
            self.titles.append(data)


def _parse_html(path: Path) -> _Tables:
    parser = _Tables()
    parser.feed(path.read_text())
    return parser


def _markdown_tables(text: str) -> list[list[list[str]]]:
    tables: list[list[list[str]]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(cells)
        previous = line
    return tables


def test_full_run_dir_gives_every_section_and_figure(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    written = write_report(run_dir, out)
    html = _parse_html(out)
    for title in ALL_SECTIONS:
        assert title in html.titles
    # Pareto: size, latency, energy; sensitivity; energy by level and by layer.
    assert len(html.images) == 6
    assert all(src.startswith("data:image/png;base64,") for src in html.images)
    assert written[1] == out.with_suffix(".md")
    assert len(written) == 2 + 6 and all(p.is_file() for p in written)
    accuracy = next(r for r in html.tables[0] if r[0] == "accuracy")
    assert accuracy[1:] == ["0.9810", "0.9750", "-0.60 points"]


def test_html_is_self_contained(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_report(run_dir, out)
    text = out.read_text()
    assert not re.search(r"(src|href)=\"(?!data:)", text)
    assert "http://" not in text and "https://" not in text
    assert "<style>" in text


def test_markdown_twin_has_the_same_tables(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_report(run_dir, out)
    md = out.with_suffix(".md").read_text()
    html_tables = [[[c or "" for c in row] for row in t] for t in _parse_html(out).tables]
    md_tables = [[["" if c == "" else c for c in row] for row in t] for t in _markdown_tables(md)]
    assert len(md_tables) == len(html_tables) >= 6
    for h, m in zip(html_tables, md_tables, strict=True):
        assert [[c.strip() for c in r] for r in h] == m
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        png = (out.parent / link).read_bytes()
        assert png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("files", "present", "absent", "images"),
    [
        (
            ("report",),
            {"Model before and after", "Per-layer changes"},
            {"Pareto front", "Sensitivity", "Energy on the accelerator"},
            0,
        ),
        (("points",), {"Pareto front"}, {"Model before and after", "Sensitivity"}, 3),
        (
            ("sensitivity", "estimate"),
            {"Sensitivity", "Energy on the accelerator"},
            {"Pareto front", "Per-layer changes"},
            3,
        ),
    ],
)
def test_missing_inputs_omit_their_sections(
    make_run_dir, tmp_path: Path, files, present, absent, images
) -> None:
    run = make_run_dir(tmp_path / "run", files)
    out = tmp_path / "r.html"
    write_report(run, out)
    html = _parse_html(out)
    assert present <= set(html.titles)
    assert not absent & set(html.titles)
    assert len(html.images) == images


def test_points_without_latency_skip_that_plot(make_run_dir, tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", ("points",))
    data = json.loads((run / "points.json").read_text())
    for p in data["points"]:
        p["latency_ms"] = None
    (run / "points.json").write_text(json.dumps(data))
    out = tmp_path / "r.html"
    write_report(run, out)
    assert len(_parse_html(out).images) == 2


def test_malformed_json_names_the_file(make_run_dir, tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", ("report",))
    (run / "points.json").write_text("{not json")
    with pytest.raises(DataError, match=r"points\.json: not valid JSON"):
        load_inputs(run)
    (run / "points.json").write_text(json.dumps({"points": [{"accuracy": 0.9}]}))
    with pytest.raises(DataError, match=r"points\[0\]: field 'size_bytes' is missing"):
        load_inputs(run)


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(DataError, match="holds none of"):
        load_inputs(tmp_path)
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no such run folder") and err.count("\n") == 1


def test_benchmark_results_render_checks_and_rows(tmp_path: Path) -> None:
    results = {
        "name": "prune",
        "checks": [
            {"name": "speedup", "value": 1.25, "target": 1.6, "unit": "x", "passed": False},
            {
                "name": "accuracy drop",
                "value": 0.2,
                "target": 0.5,
                "unit": "points",
                "passed": True,
            },
        ],
        "rows": [{"method": "filter", "speedup": 1.25}, {"method": "magnitude", "speedup": 1.0}],
    }
    path = tmp_path / "prune.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "bench.html"
    assert main(["report", str(path), "--out", str(out), "--quiet"]) == 0
    html = _parse_html(out)
    assert html.titles == ["Checks", "Rows"]
    checks, rows = html.tables
    assert checks[1] == ["speedup", "1.25", "1.6", "x", "missed"]
    assert checks[2][-1] == "met"
    assert rows[0] == ["method", "speedup"] and rows[2] == ["magnitude", "1"]
