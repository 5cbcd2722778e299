"""Sweeps that run: local pool against Ray, kill and resume, retry of failed tasks, the CLI.

The base model is LeNet-300-100 trained for two epochs on scikit-learn's 8x8 digits (a few
seconds), so each of the 25 tasks takes a fraction of a second yet the accuracies differ.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sweep_doubles import NoExecutor

from modelzip.baselines import fit_kwargs
from modelzip.cli import main
from modelzip.models import create
from modelzip.serialize import save
from modelzip.sweep import (
    STORE_NAME,
    LocalExecutor,
    SweepConfig,
    SweepStore,
    register_task_kind,
    run_sweep,
    run_tasks,
    task_key,
)
from modelzip.train import TrainConfig, train

GRID = {
    "quantize_weights.bits": [2, 3, 4, 5, 6, 8],
    "quantize_weights.granularity": ["tensor", "channel"],
    "quantize_weights.range": ["minmax", "percentile"],
}
N_TASKS = 25  # 24 grid points and the baseline


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, digits) -> Path:
    # The digits as a user .npz: workers then load it without importing scikit-learn.
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    arrays = {k: getattr(digits, k).numpy() for k in ("x_train", "y_train", "x_test", "y_test")}
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, digits, data_file) -> Path:
    torch.manual_seed(0)
    model = create("lenet300", **fit_kwargs("lenet300", digits))
    train(model, digits, TrainConfig(epochs=2, lr=0.1, val_size=0, threads=1), progress=False)
    path = data_file.parent / "lenet300-digits.mzip"
    save(model, path)
    return path


def _config(model: Path, **base) -> SweepConfig:
    return SweepConfig.from_dict(
        {
            "base": {
                "model": str(model),
                "dataset": str(model.parent / "digits.npz"),
                "eval_size": 300,
                "accelerator": "bitfusion",
                **base,
            },
            "grid": GRID,
        }
    )


def _results(run_dir: Path) -> dict[str, dict]:
    with SweepStore(run_dir / STORE_NAME) as store:
        return {r["key"]: r for r in store.records()}


@pytest.fixture(scope="module")
def pool():
    # One pool of two workers for the module: starting workers (torch, modelzip) is the slow part.
    executor = LocalExecutor(2)
    yield executor
    executor.close()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, base_model, pool) -> Path:
    out = tmp_path_factory.mktemp("local")
    summary = run_sweep(_config(base_model), out, executor=pool, progress=False)
    assert (summary.tasks, summary.done, summary.failed, summary.resumed) == (N_TASKS, 25, 0, 0)
    return out


def test_local_sweep_records_every_task_and_writes_points(local_run: Path) -> None:
    records = _results(local_run)
    assert len(records) == N_TASKS
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in records.values())
    doc = json.loads((local_run / "points.json").read_text())
    assert doc["model"].endswith("lenet300-digits.mzip") and doc["dataset"].endswith(".npz")
    assert len(doc["points"]) == 24
    base = doc["baseline"]
    params = next(r for r in records.values() if r["name"] == "baseline")["result"]["params"]
    assert base["accuracy"] > 0.5 and base["size_bytes"] == 4 * params  # float32 weights
    for p in doc["points"]:
        assert 0.0 <= p["accuracy"] <= 1.0
        assert p["size_bytes"] < base["size_bytes"]  # quantized weights are smaller
        assert p["macs"] == base["macs"] > 0
        assert p["energy_uj"] is not None and p["energy_uj"] > 0
        assert p["recipe"][0]["method"] == "quantize_weights"
    # Fewer bits, smaller model: the 2-bit points are the smallest of their granularity.
    by_bits = {}
    for p in doc["points"]:
        by_bits.setdefault(p["recipe"][0]["bits"], []).append(p["size_bytes"])
    assert max(by_bits[2]) < min(by_bits[8])
    # The Pareto flags: no flagged point is beaten on both accuracy and size by another.
    pareto = [p for p in doc["points"] if p["pareto"]]
    assert pareto and len(pareto) < 24
    for p in pareto:
        assert not any(
            q["accuracy"] >= p["accuracy"]
            and q["size_bytes"] <= p["size_bytes"]
            and (q["accuracy"], q["size_bytes"]) != (p["accuracy"], p["size_bytes"])
            for q in doc["points"]
        )


def test_rerun_of_a_finished_sweep_runs_nothing(local_run: Path, base_model: Path) -> None:
    before = _results(local_run)
    summary = run_sweep(_config(base_model), local_run, executor=NoExecutor(), progress=False)
    assert (summary.ran, summary.resumed, summary.done) == (0, N_TASKS, N_TASKS)
    assert _results(local_run) == before


def test_ray_gives_the_same_results_as_the_local_pool(
    ray_session, local_run: Path, base_model: Path, tmp_path: Path
) -> None:
    summary = run_sweep(_config(base_model), tmp_path, executor="ray", progress=False)
    assert (summary.tasks, summary.done, summary.failed) == (N_TASKS, N_TASKS, 0)
    assert ray_session.is_initialized()  # a session the caller started is left running
    local, remote = _results(local_run), _results(tmp_path)
    assert set(local) == set(remote)
    for key, record in local.items():
        assert remote[key]["result"] == record["result"], record["name"]
    points = json.loads((local_run / "points.json").read_text())
    assert json.loads((tmp_path / "points.json").read_text()) == points


def test_killed_sweep_resumes_and_records_every_task_once(
    base_model: Path, tmp_path: Path, pool: LocalExecutor
) -> None:
    grid = tmp_path / "grid.yaml"
    # Fine-tuning makes each task slow enough (~0.2 s) to kill the sweep halfway.
    finetune = {"epochs": 1, "val_size": 0, "batch_size": 32, "threads": 1}
    config = _config(base_model, train_size=256, finetune=finetune)
    grid.write_text(yaml.safe_dump(config.to_dict()))
    out = tmp_path / "run"
    db = out / STORE_NAME
    command = [sys.executable, "-m", "modelzip.cli", "sweep", str(grid), "--out", str(out)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    # Its own session, so that SIGKILL reaches the pool's workers too, as Ctrl-C in a shell would.
    proc = subprocess.Popen(
        [*command, "--workers", "1", "--quiet"], env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while _count(db) < 3:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "the sweep recorded nothing within 60 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    recorded = _results(out)
    assert 3 <= len(recorded) < N_TASKS, "kill it midway"
    assert not (out / "points.json").exists()

    # The rerun (through the API, on the warm pool) picks up where the killed one stopped.
    summary = run_sweep(SweepConfig.load(grid), out, executor=pool, progress=False)
    assert summary.resumed == len(recorded) and summary.ran == N_TASKS - len(recorded)
    assert (summary.done, summary.failed) == (N_TASKS, 0)
    final = _results(out)
    assert len(final) == N_TASKS
    with sqlite3.connect(db) as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM tasks")]
    assert sorted(keys) == sorted({task_key(r["task"]) for r in final.values()})
    for key, record in recorded.items():  # what was finished before the kill is kept as it was
        assert final[key] == record
    assert len(json.loads((out / "points.json").read_text())["points"]) == 24


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def test_failed_task_is_retried_once_and_recorded_with_its_errors(
    tmp_path: Path, pool: LocalExecutor
) -> None:
    register_task_kind("test_flaky", "sweep_task_kinds:flaky")
    register_task_kind("test_broken", "sweep_task_kinds:always_fails")
    register_task_kind("test_square", "sweep_task_kinds:square")
    tasks = [
        {"kind": "test_flaky", "n": 3, "marker": str(tmp_path / "marker")},
        {"kind": "test_broken", "n": 7},
        *({"kind": "test_square", "n": n} for n in range(4)),
    ]
    with SweepStore(tmp_path / STORE_NAME) as store:
        summary = run_tasks(tasks, store, pool, progress=False)
        assert (summary.tasks, summary.done, summary.failed, summary.retried) == (6, 5, 1, 2)
        flaky = store.get(task_key(tasks[0]))
        assert flaky["status"] == "done" and flaky["attempts"] == 2
        assert flaky["result"] == {"n": 3, "square": 9}
        assert flaky["errors"] == ["RuntimeError: first attempt of 3 fails"]
        broken = store.get(task_key(tasks[1]))
        assert broken["status"] == "failed" and broken["attempts"] == 2
        assert broken["errors"] == ["ValueError: task 7 is broken, attempt after attempt"] * 2
        assert summary.failures[0]["errors"] == broken["errors"]

        # A rerun leaves the finished and the twice-failed tasks alone.
        again = run_tasks(tasks, store, NoExecutor(), progress=False)
        assert (again.ran, again.resumed, again.failed) == (0, 6, 1)
        assert len(store.records()) == 6


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {magnitude_prune.sparsity: [1.5]}\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "sparsity=1.5 is out of range" in err
    assert err.count("\n") == 1
    good = tmp_path / "good.yaml"
    good.write_text("grid: {magnitude_prune.sparsity: [0.5]}\n")
    code = main(["sweep", str(good), "--out", str(tmp_path / "o"), "--address", "x:1"])
    assert code == 2 and "--address is for --executor ray" in capsys.readouterr().err


def test_cli_json_on_a_finished_sweep(local_run: Path, base_model: Path, tmp_path: Path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(_config(base_model).to_dict()))
    assert main(["sweep", str(grid), "--out", str(local_run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # one JSON object, no progress bar in it
    assert (out["tasks"], out["resumed"], out["ran"], out["failed"]) == (N_TASKS, N_TASKS, 0, 0)
    assert out["points_path"].endswith("points.json") and len(out["points"]) == 24
    assert out["baseline"]["accuracy"] > 0.5
