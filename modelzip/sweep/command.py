"""``modelzip sweep GRID.yaml --out RUN_DIR``: run a sweep, print its points (registered by cli)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def cmd_sweep(args: argparse.Namespace) -> int:
    from modelzip.command_output import print_json
    from modelzip.sweep.grid import SweepConfig
    from modelzip.sweep.runner import run_sweep

    limit = {} if args.max_points is None else {"max_points": args.max_points}
    config = SweepConfig.load(args.grid, **limit)
    summary = run_sweep(
        config,
        args.out,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        progress=not (args.json or args.quiet),
        trust_remote_code=args.trust_remote_code,
    )
    with open(summary.points_path) as f:
        document = json.load(f)
    if args.json:
        print_json({**summary.to_dict(), **document})
        return 0
    if not args.quiet:
        _print_points(document)
    print(
        f"{summary.tasks} tasks: {summary.done} done, {summary.failed} failed "
        f"({summary.resumed} already in the store); {summary.store}, {summary.points_path}"
    )
    for failure in summary.failures:
        print(f"failed {failure['name']}: {failure['errors'][-1]}")
    return 0


def _print_points(document: dict[str, Any]) -> None:
    from rich.table import Table

    from modelzip.command_output import rich_console

    table = Table(title=f"sweep of {document['model']}", title_justify="left")
    for c in ("point", "accuracy", "bytes", "MACs", "energy uJ", "pareto"):
        table.add_column(c, justify="left" if c == "point" else "right")
    base = document["baseline"]
    rows = [{"name": "baseline", **base, "pareto": None}, *document["points"]]
    columns = (("accuracy", ".4f"), ("size_bytes", ","), ("macs", ","), ("energy_uj", ".3g"))
    for r in rows:
        cells = ["-" if r.get(k) is None else format(r[k], spec) for k, spec in columns]
        table.add_row(r["name"], *cells, "*" if r["pareto"] else "")
    rich_console().print(table)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep``."""
    p = sub.add_parser(
        "sweep",
        help="evaluate a grid or random sample of recipes in parallel (local pool or Ray)",
        description="Evaluate every recipe of GRID.yaml, storing each result in "
        "RUN_DIR/sweep.sqlite as it finishes; a rerun resumes where an interrupted one stopped. "
        "Writes RUN_DIR/points.json (with Pareto flags) for `modelzip report`.",
    )
    p.add_argument("grid", help="sweep YAML: base, recipe template, grid and/or random")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="default local")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--workers", type=int, help="parallel workers (default: the CPUs available)")
    p.add_argument("--out", required=True, help="run folder for sweep.sqlite and points.json")
    p.add_argument(
        "--max-points",
        type=int,
        # Not imported from grid.py, which loads torch: `modelzip --help` stays light.
        help="refuse a sweep of more recipes than this (default: MAX_SWEEP_POINTS, 10,000); "
        "the count (grid product plus random.n) is checked before anything is built",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a package.module:factory base model import a module outside the installed "
        "packages (runs its code in every worker): only for code you trust",
    )
    p.set_defaults(func=cmd_sweep)
