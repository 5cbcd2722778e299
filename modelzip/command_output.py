"""What the commands print: exactly one JSON object with ``--json``, else rich tables.

Shared by :mod:`modelzip.cli` and the commands that live with their family (``deep``, ``auto``,
``nas``, ``sweep`` ...), so that every command's ``--json`` output is written the same way.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def print_json(data: Any) -> None:
    """``data`` as one indented JSON object on stdout (numpy and torch scalars as floats)."""
    print(json.dumps(data, indent=2, default=float))


def rich_console() -> Console:
    """A rich console on stdout (imported on use: ``modelzip --help`` stays fast)."""
    from rich.console import Console

    return Console()
