"""The Markdown twin: the same sections and tables; figures are PNG files in a folder beside it
(``report_files/NAME.png``), linked relatively, so the Markdown renders on GitHub and in editors."""

from __future__ import annotations

from pathlib import Path

from modelzip.core.atomic import write_bytes
from modelzip.reporting.sections import Section, Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> list[str]:
    lines = [f"*{t.caption}*", ""] if t.caption else []
    lines.append("| " + " | ".join(_cell(h) or " " for h in t.header) + " |")
    lines.append("|" + "|".join("---" for _ in t.header) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return [*lines, ""]


def render_markdown(title: str, sections: list[Section], figure_dir: Path) -> tuple[str, dict]:
    """The Markdown text and the figures to write, ``{path: png}`` (paths under ``figure_dir``,
    linked relative to the Markdown file's folder, ``figure_dir.parent``)."""
    lines = [f"# {title}", ""]
    files: dict[Path, bytes] = {}
    for s in sections:
        lines += [f"## {s.title}", ""]
        for text in s.text:
            lines += [text, ""]
        for t in s.tables:
            lines += _table(t)
        for f in s.figures:
            path = figure_dir / f"{f.name}.png"
            files[path] = f.png
            lines += [f"![{f.caption}]({figure_dir.name}/{path.name})", ""]
    return "\n".join(lines), files


def write_markdown(path: Path, title: str, sections: list[Section]) -> list[Path]:
    """Write the Markdown file and its figures atomically; returns every path written."""
    figure_dir = path.parent / f"{path.stem}_files"
    text, files = render_markdown(title, sections, figure_dir)
    for file, png in files.items():
        write_bytes(file, png)
    write_bytes(path, text.encode())
    return [path, *files]
