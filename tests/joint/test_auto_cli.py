"""``modelzip auto`` and ``modelzip sensitivity`` end to end: files written, the recipe replays."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from modelzip.api import compress
from modelzip.baselines import pretrained
from modelzip.cli import main
from modelzip.core.counting import module_bytes
from modelzip.recipe import Recipe
from modelzip.serialize import load

FAST = ["--validation-size", "300", "--finetune-samples", "400", "--budget-evals", "5"]


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("auto")
    argv = ["auto", "lenet300", "--dataset", "mnist", "--target", "size=300kB"]
    argv += ["--max-drop", "1.5", "--out", str(out / "m.mzip"), "--run-dir", str(out / "run")]
    argv += ["--methods", "svd,quantize_weights", "--json", *FAST]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    return code, out, printed.getvalue()


def test_auto_writes_model_and_run_dir(auto_run):
    code, out, printed = auto_run
    assert code == 0
    summary = json.loads(printed)
    assert summary["cost"] <= 300_000 == summary["budget"]["limit"]
    assert summary["drop_points"] <= 1.5
    run = out / "run"
    for name in ("points.json", "report.json", "sensitivity.json", "recipe.yaml", "pareto.png"):
        assert (run / name).is_file(), name
    points = json.loads((run / "points.json").read_text())
    assert set(points) == {"model", "dataset", "baseline", "points"}
    assert set(points["baseline"]) == {"accuracy", "size_bytes", "macs", "latency_ms", "energy_uj"}
    assert points["points"] and any(p["pareto"] for p in points["points"])
    for p in points["points"]:
        assert 0.0 <= p["accuracy"] <= 1.0 and isinstance(p["recipe"], list)
    saved = load(out / "m.mzip")
    assert module_bytes(saved) == summary["cost"]


def test_recipe_replays_through_compress_to_the_same_cost(auto_run, mnist):
    _, out, _ = auto_run
    recipe = Recipe.load(out / "run" / "recipe.yaml")
    assert len(recipe) >= 1
    model = pretrained("lenet300", "mnist", progress=False)
    # With the data: a static int8 step calibrates on it (the trainable form is costed).
    small, _ = compress(model, recipe, mnist, evaluate=False, measure=False, deploy=False)
    summary = json.loads((out / "run" / "auto.json").read_text())
    assert module_bytes(small) == summary["cost"] <= 300_000


def test_sensitivity_command_writes_data_and_plots(tmp_path, capsys):
    argv = ["sensitivity", "lenet300", "--dataset", "mnist", "--out", str(tmp_path)]
    argv += ["--methods", "magnitude_prune", "--validation-size", "200", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert saved["curves"] == printed["curves"]
    assert {c["layer"] for c in saved["curves"]} == {"fc1", "fc2", "fc3"}
    assert (tmp_path / "sensitivity-magnitude_prune.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "target, says",
    [("size=50kg", "unit 'kg'"), ("size=10B", "out of reach"), ("speed=1", "choose one of")],
)
def test_bad_or_infeasible_target_is_one_error_line(tmp_path, capsys, target, says):
    argv = ["auto", "lenet300", "--dataset", "mnist", "--target", target, "--quiet"]
    argv += ["--out", str(tmp_path / "m.mzip"), "--methods", "magnitude_prune", *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]
    assert not (tmp_path / "m.mzip").exists()
