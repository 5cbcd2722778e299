"""Shared harness of the atheris fuzzers: write the input to a file, read it with a modelzip
reader, and let anything but a :class:`~modelzip.errors.ModelzipError` crash the run.

Each ``fuzz_*.py`` script seeds its corpus (``out/fuzz/corpus/NAME``, git-ignored) with a valid
file from ``tests/reliability/file_mutations.py``, so that libFuzzer's mutations start from the
format's structure. Run through ``make fuzz`` (``-max_total_time`` bounds each run); a crash
leaves its input as ``crash-*`` in the working directory, to be kept as a regression test.
"""

from __future__ import annotations

import os
import sys
import tempfile
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
    import modelzip.serialize  # noqa: F401
from modelzip.errors import ModelzipError

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


def run(name: str, suffix: str, read: Callable[[Path], object], seed: Callable[[Path], bytes]):
    """Fuzz ``read`` on files ending in ``suffix``; extra argv goes to libFuzzer."""
    torch.set_num_threads(1)
    corpus = seed_corpus(name, seed)
    workdir = Path(tempfile.mkdtemp(prefix=f"modelzip-fuzz-{name}-"))
    path = workdir / f"input{suffix}"

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            read(path)
        except ModelzipError as e:
            if not str(e).strip():
                raise AssertionError("a ModelzipError without a message") from e

    argv = [sys.argv[0], *sys.argv[1:], str(corpus)]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
