"""Faults: a training command killed with SIGKILL at a random moment and rerun finishes with the
weights of an uninterrupted run and leaves no partial file; a full disk or an unwritable output
folder gives a clear error and leaves existing files intact."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import modelzip
from modelzip.core.atomic import atomic_path, safe_join, write_bytes
from modelzip.core.errors import ModelzipError

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.attack("Killed or interrupted runs (SIGKILL, ENOSPC)")


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    y = rng.integers(0, 4, 1024)
    x = (rng.random((1024, 12, 12)) * 0.5 + y[:, None, None] / 8).astype(np.float32)
    np.savez(path, x_train=x, y_train=y, x_test=x[:256], y_test=y[:256])
    return path


def _train_command(npz: Path, out: Path, checkpoint_dir: Path | None) -> list[str]:
    command = [sys.executable, "-m", "modelzip.cli", "train", "lenet300", "--dataset", str(npz),
               "--epochs", "8", "--out", str(out), "--json"]  # fmt: skip
    if checkpoint_dir is not None:
        command += ["--checkpoint-dir", str(checkpoint_dir)]
    return command


def _run(command: list[str]) -> None:
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def reference(npz, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run, in this process (one thread, like the subprocesses)."""
    from modelzip.cli import main

    out = tmp_path_factory.mktemp("reference") / "model.mzip"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_train_command(npz, out, None)[3:]) == 0
    finally:
        torch.set_num_threads(threads)
    return modelzip.load(out).state_dict()


def _assert_complete_or_absent(path: Path) -> None:
    if path.exists():
        modelzip.load(path)  # a complete, valid file


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_a_random_moment_then_rerun(npz, reference, tmp_path, seed):
    rng = random.Random(seed)
    out, checkpoints = tmp_path / "model.mzip", tmp_path / "checkpoints"
    process = subprocess.Popen(_train_command(npz, out, checkpoints), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # Wait until training has written its first checkpoint, then kill within the next moments
    # (with seed 1 sometimes before any checkpoint exists at all).
    deadline = time.monotonic() + 120
    while not (checkpoints / "checkpoint.json").exists() and process.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.0))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    _assert_complete_or_absent(out)

    _run(_train_command(npz, out, checkpoints))
    got = modelzip.load(out).state_dict()
    for name, want in reference.items():
        assert torch.equal(got[name], want), name
    leftovers = sorted(p.name for p in checkpoints.iterdir())
    assert leftovers == ["checkpoint.json", "epoch-8.safetensors"], leftovers


def test_full_disk_leaves_the_existing_file_intact(tmp_path, monkeypatch):
    model = modelzip.models.create("lenet300")
    path = modelzip.save(model, tmp_path / "model.mzip")
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("modelzip.serialize.save_file", full)
    with pytest.raises(ModelzipError, match="No space left on device"):
        modelzip.save(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.mzip"]  # no temporary file left


def test_full_disk_during_fsync(tmp_path, monkeypatch):
    write_bytes(tmp_path / "a.json", b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ModelzipError, match=r"cannot write .*No space left"):
        write_bytes(tmp_path / "a.json", b"new")
    assert (tmp_path / "a.json").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_folder_gives_a_clear_error(tmp_path, where):
    # Running as root ignores permission bits, so the folder is made unwritable by its nature.
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "model.mzip"
    else:
        target = Path("/proc/self/modelzip-test/model.mzip")
    with pytest.raises(ModelzipError, match="cannot write"), atomic_path(target) as tmp:
        tmp.write_bytes(b"data")


def test_cli_reports_unwritable_output_in_one_line(tmp_path, capsys):
    from modelzip.cli import main

    (tmp_path / "file").write_text("x")
    code = main(["train", "lenet300", "--dataset", "digits", "--epochs", "1",
                 "--out", str(tmp_path / "file" / "m.mzip"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot write")


@pytest.mark.parametrize("name", ["../escape.json", "/etc/passwd", "a/../../b", "", "a\x00b"])
def test_names_from_files_cannot_escape_the_output_folder(tmp_path, name):
    with pytest.raises(ModelzipError):
        safe_join(tmp_path, name)
    assert safe_join(tmp_path, "sub", "ok.json") == (tmp_path / "sub" / "ok.json").resolve()


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(ModelzipError, match="escapes"):
        safe_join(tmp_path / "out", "link", "x.json")
