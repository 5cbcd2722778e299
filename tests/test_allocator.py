"""glibc's malloc thresholds fixed for timed runs (:mod:`modelzip.core.allocator`)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# A fresh process frees and reallocates three 3 MB buffers per "call", as a convnet's forward
# does with its activations; it prints the page faults per call after warm-up.
PROBE = """
import resource, sys, torch
from modelzip.core.allocator import keep_freed_buffers
print(keep_freed_buffers())
def call():
    bufs = [torch.empty(768 * 1024).fill_(1.0) for _ in range(3)]
    del bufs
for _ in range(3):
    call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    call()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _probe(env_extra: dict[str, str]) -> tuple[str, float]:
    import os

    env = {**os.environ, **env_extra}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's thresholds; other C libraries are left alone")
def test_freed_buffers_are_reused_without_page_faults():
    applied, faults = _probe({})
    assert applied == "True"
    # 9 MB per call would be 2,300 pages if the buffers were mapped afresh at every call.
    assert faults < 50


def test_opt_out_keeps_the_c_library_settings():
    applied, _ = _probe({"MODELZIP_KEEP_BUFFERS": "0"})
    assert applied == "False"


def test_the_timing_harness_fixes_them(monkeypatch):
    from modelzip.core import allocator
    from modelzip.core.timing import time_interleaved

    calls = []
    monkeypatch.setattr("modelzip.core.timing.keep_freed_buffers", lambda: calls.append(1))
    time_interleaved([lambda: None], reps=1)
    assert calls == [1]
    assert allocator.keep_freed_buffers() in (True, False)
