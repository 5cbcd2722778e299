"""How many hostile inputs each attack class was tried with, for RELIABILITY.md's table.

A reliability test names its class with ``@pytest.mark.attack("...")`` (or a module's
``pytestmark``); a test that tries many inputs in one run (Hypothesis, a loop) calls
:func:`tried` per input, any other counts one input per run. The conftest writes the counts and
the failures to ``out/reliability/tests.json`` at the end of the session;
``fuzz/reliability_table.py`` (run by ``make fuzz``) turns them, with the fuzzers' counts, into
the table.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "out" / "reliability"

_counts: dict[str, dict[str, int]] = defaultdict(lambda: {"inputs": 0, "tests": 0, "failed": 0})
_current = {"inputs": 0}


def tried(n: int = 1) -> None:
    """Count ``n`` inputs for the running test's attack class."""
    _current["inputs"] += n


def start_test() -> None:
    _current["inputs"] = 0


def end_test(attack: str, where: str, failed: bool) -> None:
    entry = _counts[attack]
    entry["inputs"] += _current["inputs"] or 1
    entry["tests"] += 1
    entry["failed"] += int(failed)
    entry.setdefault("where", [])  # type: ignore[arg-type]
    if where not in entry["where"]:  # type: ignore[operator]
        entry["where"].append(where)  # type: ignore[union-attr]


def write(profile: str) -> Path | None:
    if not _counts:
        return None
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "tests.json"
    path.write_text(json.dumps({"profile": profile, "attacks": _counts}, indent=1, sort_keys=True))
    return path
