"""Build a report from a RUN_DIR or results JSON and write the HTML page and its Markdown twin."""

from __future__ import annotations

from pathlib import Path

from modelzip.core.atomic import write_text
from modelzip.progress import progress_bar
from modelzip.reporting.html_page import render_html
from modelzip.reporting.load import load_inputs
from modelzip.reporting.markdown import write_markdown
from modelzip.reporting.sections import build_sections, count_steps


def _title(inputs, path: Path) -> str:
    for data in (inputs.points, inputs.sensitivity):
        if data and data.get("model"):
            return f"modelzip report: {data['model']} on {data.get('dataset', '?')}"
    if inputs.model_name:
        return f"modelzip report: {inputs.model_name} ({path.name})"
    if inputs.results is not None:
        return f"modelzip benchmark: {path.stem}"
    return f"modelzip report: {path.name}"


def write_report(
    source: str | Path,
    out: str | Path,
    markdown: str | Path | None = None,
    accelerator: str = "eyeriss",
    progress: bool = False,
) -> list[Path]:
    """Write ``out`` (HTML) and the Markdown twin (default: ``report.md`` beside ``out``).

    Returns
    -------
    The paths written: the HTML page, the Markdown file and the Markdown's PNG figures.
    """
    source, out = Path(source), Path(out)
    markdown = Path(markdown) if markdown is not None else out.with_suffix(".md")
    inputs = load_inputs(source, accelerator)
    with progress_bar("report", count_steps(inputs), enabled=progress) as bar:
        sections = build_sections(inputs, tick=bar.advance)
    title = _title(inputs, source)
    write_text(out, render_html(title, sections))
    return [out, *write_markdown(markdown, title, sections)]
