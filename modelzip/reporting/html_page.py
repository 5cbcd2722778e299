"""One self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no external links."""

from __future__ import annotations

import base64
import re
from html import escape

from modelzip.reporting.sections import Section, Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 0.88em; }
caption { text-align: left; color: #666; padding-bottom: 0.3em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; }
figcaption { color: #666; font-size: 0.85em; }
img { max-width: 100%; }
"""


_NUMBER = re.compile(r"^[-+]?[\d,.]+(e[-+]?\d+)?(x|%| points| ?x smaller)?$")


def _td(cell: str) -> str:
    kind = ' class="n"' if _NUMBER.match(cell) else ""
    return f"<td{kind}>{escape(cell)}</td>"


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in t.rows)
    caption = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(s: Section) -> str:
    parts = [f"<section><h2>{escape(s.title)}</h2>"]
    parts += [f"<p>{escape(line)}</p>" for line in s.text]
    parts += [_table(t) for t in s.tables]
    for f in s.figures:
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(
            f'<figure><img alt="{escape(f.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(f.caption)}</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def render_html(title: str, sections: list[Section], script: str = "") -> str:
    """The page; ``script`` is inline JavaScript appended to the body (used by tests only)."""
    body = "\n".join(_section(s) for s in sections)
    tail = f"<script>{script}</script>" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>\n{body}\n{tail}</body></html>\n"
    )
