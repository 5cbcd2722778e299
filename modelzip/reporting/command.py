"""``modelzip report RUN_DIR_OR_RESULTS --out report.html`` (registered by :mod:`modelzip.cli`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` to ``sub``."""
    p = sub.add_parser("report", help="HTML and Markdown report of a run folder or results JSON")
    p.add_argument("source", help="a RUN_DIR (report.json, points.json ...) or a results .json")
    p.add_argument("--out", required=True, help="the HTML file to write (self-contained)")
    p.add_argument("--markdown", help="the Markdown twin (default: the --out path with .md)")
    p.add_argument("--accelerator", default="eyeriss", help="preset for estimates from model.mzip")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from modelzip.command_output import print_json
    from modelzip.reporting.write import write_report

    progress = not (args.quiet or args.json)
    paths = write_report(args.source, args.out, args.markdown, args.accelerator, progress=progress)
    if args.json:
        figures = [str(p) for p in paths[2:]]
        print_json({"html": str(paths[0]), "markdown": str(paths[1]), "figures": figures})
    else:
        print(f"wrote {paths[0]} and {paths[1]} ({len(paths) - 2} figures)")
    return 0
