"""Shared harness of the atheris fuzzers: write the input to a file, read it with a modelzip
reader, and let anything but a :class:`~modelzip.core.errors.ModelzipError` crash the run.

Each ``fuzz_*.py`` script seeds its corpus (``out/fuzz/corpus/NAME``, git-ignored) with a valid
file from ``tests/reliability/file_mutations.py``, so that libFuzzer's mutations start from the
format's structure. Run through ``make fuzz`` (``-max_total_time`` bounds each run); a crash
leaves its input as ``crash-*`` in the working directory, to be kept as a regression test.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import atheris
import numpy  # noqa: F401  (imported before instrumenting: only our readers get coverage)
import safetensors  # noqa: F401
import torch
import yaml  # noqa: F401

with atheris.instrument_imports(include=["modelzip"]):
    # Instrumented for coverage feedback: the readers and everything they call.
    import modelzip
    import modelzip.data.npz
    import modelzip.hardware.spec
    import modelzip.recipe
    import modelzip.serialize
    import modelzip.sweep.grid  # noqa: F401
from modelzip.core.errors import ModelzipError

ROOT = Path(__file__).resolve().parent.parent


def seed_corpus(name: str, seed: Callable[[Path], bytes]) -> Path:
    """``out/fuzz/corpus/name`` holding at least the valid seed file."""
    corpus = ROOT / "out" / "fuzz" / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    first = corpus / "seed"
    if not first.exists():
        with tempfile.TemporaryDirectory() as tmp:
            first.write_bytes(seed(Path(tmp)))
    return corpus


class Counts:
    """Inputs tried so far, written to ``out/reliability/fuzz-NAME.json`` every few seconds (the
    process ends inside libFuzzer, which runs no Python exit hooks) for RELIABILITY.md's table."""

    def __init__(self, name: str, attack: str) -> None:
        self.path = ROOT / "out" / "reliability" / f"fuzz-{name}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data = {"attack": attack, "reader": name, "inputs": 0}
        self.last = 0.0

    def add(self) -> None:
        self.data["inputs"] += 1
        now = time.monotonic()
        if now - self.last > 2:
            self.last = now
            self.path.write_text(json.dumps(self.data))


def run(
    name: str,
    suffix: str,
    read: Callable[[Path], object],
    seed: Callable[[Path], bytes],
    attack: str | None = None,
):
    """Fuzz ``read`` on files ending in ``suffix``; extra argv goes to libFuzzer."""
    torch.set_num_threads(1)
    corpus = seed_corpus(name, seed)
    workdir = Path(tempfile.mkdtemp(prefix=f"modelzip-fuzz-{name}-"))
    path = workdir / f"input{suffix}"
    counts = Counts(name, attack or f"Coverage-guided mutation of {suffix} files")

    def one_input(data: bytes) -> None:
        counts.add()
        path.write_bytes(data)
        try:
            read(path)
        except ModelzipError as e:
            if not str(e).strip():
                raise AssertionError("a ModelzipError without a message") from e

    argv = [sys.argv[0], *sys.argv[1:], str(corpus)]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
