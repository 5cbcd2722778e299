"""What a killed write leaves behind is removed by the next one; YAML keys are unique."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import modelzip
from modelzip.core.atomic import STALE_SECONDS, atomic_path
from modelzip.core.config import load_yaml
from modelzip.core.errors import ConfigError
from modelzip.models import create
from modelzip.recipe import Recipe


def _temporaries(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _writer(target: Path, data: bytes, then: str) -> str:
    """A Python script that writes ``data`` to ``target`` through ``atomic_path`` and runs the
    statement ``then`` before the write completes."""
    return textwrap.dedent(
        f"""
        import os, signal, sys
        from modelzip.core.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes({data!r})
            {then}
        """
    )


@pytest.mark.attack("Process killed during a write")
def test_write_killed_with_sigkill_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "model.mzip"
    script = _writer(target, b"half a file", "os.kill(os.getpid(), signal.SIGKILL)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert run.returncode == -9
    left = _temporaries(tmp_path, "model.mzip")
    assert len(left) == 1 and not target.exists()
    modelzip.save(create("lenet300"), target)
    assert _temporaries(tmp_path, "model.mzip") == []
    assert modelzip.load(target) is not None


@pytest.mark.attack("Process killed during a write")
def test_a_live_writers_temporary_is_kept(tmp_path):
    target = tmp_path / "out.bin"
    script = _writer(target, b"slow writer", 'print("started", flush=True); sys.stdin.read()')
    writer = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert writer.stdout.readline().strip() == b"started"
        theirs = _temporaries(tmp_path, "out.bin")
        assert len(theirs) == 1
        with atomic_path(target) as mine:
            mine.write_bytes(b"fast writer")
        assert _temporaries(tmp_path, "out.bin") == theirs  # still writing: kept
    finally:
        writer.communicate(b"", timeout=60)
    assert target.read_bytes() == b"slow writer"
    assert _temporaries(tmp_path, "out.bin") == []


@pytest.mark.attack("Process killed during a write")
def test_old_style_temporaries_are_removed_only_when_old(tmp_path):
    target = tmp_path / "out.bin"
    fresh, old = tmp_path / ".out.bin.abcd1234.tmp", tmp_path / ".out.bin.efgh5678.tmp"
    fresh.write_bytes(b"")
    old.write_bytes(b"")
    past = time.time() - STALE_SECONDS - 60
    os.utime(old, (past, past))
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
    assert fresh.exists() and not old.exists()


@pytest.mark.attack("Duplicate YAML keys")
@pytest.mark.parametrize(
    "text",
    [
        "- {method: magnitude_prune, sparsity: 0.5, sparsity: 0.9}\n",
        "- method: magnitude_prune\n  sparsity: 0.5\n  sparsity: 0.9\n",
        "- method: magnitude_prune\n  select: {exclude: [fc3], exclude: [fc1]}\n",
    ],
)
def test_duplicate_yaml_keys_are_refused(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="duplicate key"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="duplicate key"):
        Recipe.load(path)


def test_same_key_in_different_mappings_is_fine(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("- {method: magnitude_prune, sparsity: 0.5}\n- {method: int8, select: {}}\n")
    assert len(load_yaml(path)) == 2
