"""CLI subcommands of this family (registered by :mod:`modelzip.cli`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this family's subcommands to ``sub`` (none yet)."""
