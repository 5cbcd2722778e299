"""Sensitivity candidates through the sweep store: same curves as in process, a rerun resumes,
a local pool and Ray give the same accuracies, and the commands record and read back."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from modelzip.baselines import fit_kwargs
from modelzip.cli import main
from modelzip.joint.sensitivity import SensitivityConfig, run_sensitivity
from modelzip.model_source import dataset_for, load_model
from modelzip.models import create
from modelzip.serialize import save
from modelzip.sweep import STORE_NAME
from modelzip.sweep.sensitivity_task import ModelSource, StoreRunner
from modelzip.train import TrainConfig, train

CONFIG = SensitivityConfig(
    methods=("magnitude_prune", "quantize_weights"),
    sparsities=(0.0, 0.9),
    bit_widths=(2, 8),
    validation_size=200,
)
CANDIDATES = 3 * 2 * 2  # lenet300's three Linears x two methods x two values


@pytest.fixture(scope="module")
def source(tmp_path_factory, digits) -> ModelSource:
    folder = tmp_path_factory.mktemp("sensitivity")
    data = folder / "digits.npz"
    arrays = {k: getattr(digits, k).numpy() for k in ("x_train", "y_train", "x_test", "y_test")}
    np.savez(data, **arrays)
    torch.manual_seed(0)
    model = create("lenet300", **fit_kwargs("lenet300", digits))
    train(model, digits, TrainConfig(epochs=2, lr=0.1, val_size=0, threads=1), progress=False)
    save(model, folder / "lenet300.mzip")
    return ModelSource(str(folder / "lenet300.mzip"), None, str(data), CONFIG.validation_size)


@pytest.fixture(scope="module")
def loaded(source):
    data = dataset_for(source.dataset, source.model)
    model = load_model(source.model, None, source.dataset, progress=False, data=data)
    return model.eval(), data


@pytest.fixture(scope="module")
def in_process(loaded):
    model, data = loaded
    return _curves(run_sensitivity(model, data, CONFIG))


def _curves(result) -> list[dict]:
    return [c.to_dict() for c in result.curves]


def test_store_gives_the_same_curves_and_a_rerun_resumes(source, loaded, in_process, tmp_path):
    model, data = loaded
    first = StoreRunner(source, tmp_path / STORE_NAME)
    assert _curves(run_sensitivity(model, data, CONFIG, runner=first)) == in_process
    assert first.resumed == 0
    again = StoreRunner(source, tmp_path / STORE_NAME)
    assert _curves(run_sensitivity(model, data, CONFIG, runner=again)) == in_process
    assert again.resumed == CANDIDATES


def test_a_resumed_candidate_is_read_back_not_evaluated(source, loaded, tmp_path):
    model, data = loaded
    store = tmp_path / STORE_NAME
    run_sensitivity(model, data, CONFIG, runner=StoreRunner(source, store))
    with sqlite3.connect(store) as db:  # one stored accuracy changed behind the runner's back
        key, result = db.execute("SELECT key, result FROM tasks LIMIT 1").fetchone()
        marked = {**json.loads(result), "accuracy": 0.123}
        db.execute("UPDATE tasks SET result = ? WHERE key = ?", (json.dumps(marked), key))
    resumed = run_sensitivity(model, data, CONFIG, runner=StoreRunner(source, store))
    assert 0.123 in [a for c in resumed.curves for a in c.accuracy]


def test_other_weights_under_the_same_name_are_evaluated_anew(source, loaded, tmp_path):
    # A retrained baseline or an overwritten file keeps its name: the key holds the state.
    model, data = loaded
    store = tmp_path / STORE_NAME
    run_sensitivity(model, data, CONFIG, runner=StoreRunner(source, store))
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.fc1.weight.mul_(0.5)
    runner = StoreRunner(source, store)
    run_sensitivity(changed, data, CONFIG, runner=runner)
    assert runner.resumed == 0
    again = StoreRunner(source, store)
    run_sensitivity(model, data, CONFIG, runner=again)
    assert again.resumed == CANDIDATES


def test_a_relative_path_resumes_from_another_directory(source, tmp_path, capsys, monkeypatch):
    folder = Path(source.model).parent
    out = tmp_path / "out"
    flags = ["--out", str(out), "--methods", "magnitude_prune", "--validation-size", "200"]
    monkeypatch.chdir(folder)
    argv = ["sensitivity", "lenet300.mzip", "--dataset", "digits.npz", *flags, "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    monkeypatch.chdir(folder.parent)
    argv = ["sensitivity", f"{folder.name}/lenet300.mzip", "--dataset",
            f"{folder.name}/digits.npz", *flags, "--json"]  # fmt: skip
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["resumed"] == sum(len(c["values"]) for c in first["curves"]) > 0


def test_a_local_pool_gives_the_same_curves(source, loaded, in_process, tmp_path):
    model, data = loaded
    runner = StoreRunner(source, tmp_path / STORE_NAME, executor="local", workers=2)
    assert _curves(run_sensitivity(model, data, CONFIG, runner=runner)) == in_process


def test_ray_gives_the_same_curves(ray_session, source, loaded, in_process, tmp_path):
    model, data = loaded
    runner = StoreRunner(source, tmp_path / STORE_NAME, executor="ray")
    assert _curves(run_sensitivity(model, data, CONFIG, runner=runner)) == in_process
    assert ray_session.is_initialized()  # a session the caller started is left running


def test_the_command_records_and_resumes(source, tmp_path, capsys):
    argv = [
        "sensitivity", source.model, "--dataset", source.dataset, "--out", str(tmp_path),
        "--methods", "magnitude_prune", "--validation-size", "200", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["resumed"] == 0 and (tmp_path / STORE_NAME).is_file()
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["resumed"] == sum(len(c["values"]) for c in first["curves"]) > 0
    assert second["curves"] == first["curves"]


def test_address_without_ray_is_refused(source, tmp_path, capsys):
    argv = ["sensitivity", source.model, "--dataset", source.dataset, "--out", str(tmp_path),
            "--address", "127.0.0.1:6379"]  # fmt: skip
    assert main(argv) != 0
    assert "--address is for --executor ray" in capsys.readouterr().err
