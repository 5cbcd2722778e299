"""Sweep files: grid and random expansion, keys, and the errors for bad input."""

from __future__ import annotations

import re

import pytest
import yaml

from modelzip.core.errors import ConfigError
from modelzip.sweep import RandomSpace, SweepConfig, pareto_flags, task_key
from modelzip.sweep.runner import sweep_tasks


def test_grid_is_the_product_applied_to_the_template() -> None:
    config = SweepConfig.from_dict(
        {
            "recipe": [{"method": "magnitude_prune", "select": {"exclude": ["fc3"]}}],
            "grid": {"magnitude_prune.sparsity": [0.5, 0.8, 0.9], "quantize_weights.bits": [4, 8]},
        }
    )
    points = config.points()
    assert len(points) == 6
    first = points[0]
    assert first.name == "magnitude_prune.sparsity=0.5,quantize_weights.bits=4"
    assert [s["method"] for s in first.recipe] == ["magnitude_prune", "quantize_weights"]
    assert first.recipe[0]["sparsity"] == 0.5
    assert first.recipe[0]["select"]["exclude"] == ["fc3"]  # the template's fields stay
    assert {(p.recipe[0]["sparsity"], p.recipe[1]["bits"]) for p in points} == {
        (s, b) for s in (0.5, 0.8, 0.9) for b in (4, 8)
    }


def test_nested_keys_and_duplicates() -> None:
    config = SweepConfig.from_dict(
        {"grid": {"int8.select.exclude": [["fc1"], ["fc3"]], "int8.per_channel": [True, True]}}
    )
    points = config.points()
    assert len(points) == 2  # the repeated value gives the same recipe, evaluated once
    assert points[1].recipe[0]["select"]["exclude"] == ["fc3"]


def test_random_sample_is_reproducible_and_in_range() -> None:
    space = {
        "magnitude_prune.sparsity": {"low": 0.3, "high": 0.95},
        "quantize_weights.bits": [2, 4, 8],
        "svd.rank": {"low": 2, "high": 64, "log": True, "integer": True},
    }
    a = RandomSpace(n=20, seed=3, space=space).draw()
    assert a == RandomSpace(n=20, seed=3, space=space).draw()
    assert a != RandomSpace(n=20, seed=4, space=space).draw()
    assert all(0.3 <= p["magnitude_prune.sparsity"] <= 0.95 for p in a)
    assert {p["quantize_weights.bits"] for p in a} <= {2, 4, 8}
    assert all(isinstance(p["svd.rank"], int) and 2 <= p["svd.rank"] <= 64 for p in a)


def test_grid_and_random_together() -> None:
    config = SweepConfig.from_dict(
        {
            "grid": {"magnitude_prune.sparsity": [0.5, 0.9]},
            "random": {"n": 4, "seed": 0, "space": {"magnitude_prune.sparsity": [0.5, 0.7]}},
        }
    )
    sparsities = [p.recipe[0]["sparsity"] for p in config.points()]
    assert sparsities[:2] == [0.5, 0.9]
    assert set(sparsities) <= {0.5, 0.7, 0.9} and len(sparsities) == len(set(sparsities))


def test_no_grid_gives_the_template_alone() -> None:
    config = SweepConfig.from_dict({"recipe": [{"method": "int8"}]})
    assert [p.recipe for p in config.points()] == [[{"method": "int8", **_int8_defaults()}]]


def _int8_defaults() -> dict:
    from modelzip.core.registry import get_method

    return {k: v for k, v in get_method("int8").config_type().to_dict().items() if k != "method"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"grid": {"magnitude_prune.sparsity": [0.5, 1.5]}}, "sparsity=1.5 is out of range"),
        ({"grid": {"magnitude_prune.sparsity": []}}, "non-empty list"),
        ({"grid": {"sparsity": [0.5]}}, "must be 'method.field'"),
        ({"grid": {"no_such_method.x": [1]}}, "unknown method 'no_such_method'"),
        ({"grid": {"magnitude_prune.spasity": [0.5]}}, "no field 'spasity'"),
        ({"base": {"eval_size": 0}}, "SweepBase.eval_size=0 is out of range; allowed [1, inf)"),
        ({"base": {"accelerator": "nope"}}, "unknown accelerator 'nope'"),
        ({"base": {"finetune": {"epochs": 0}}}, "TrainConfig.epochs=0 is out of range"),
        ({"random": {"n": 0, "space": {"int8.per_channel": [True]}}}, "RandomSpace.n=0"),
        ({"random": {"space": {"svd.rank": {"low": 9, "high": 2}}}}, "is above high"),
        ({"random": {"space": {"svd.rank": {"low": 0, "high": 2, "log": True}}}}, "log needs"),
        ({"random": {"space": {"svd.rank": 3}}}, "must be a list of values"),
        ({"grids": {}}, "no field 'grids'"),
    ],
)
def test_bad_sweep_files_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        SweepConfig.from_dict(data)


def test_bad_point_names_the_point() -> None:
    with pytest.raises(ConfigError, match=r"sweep point magnitude_prune.sparsity=1.5"):
        SweepConfig.from_dict({"grid": {"magnitude_prune.sparsity": [1.5]}})


def test_config_round_trips_through_yaml(tmp_path) -> None:
    data = {
        "base": {"model": "lenet300", "dataset": "digits", "finetune": {"epochs": 1}},
        "grid": {"magnitude_prune.sparsity": [0.5, 0.9]},
        "random": {"n": 2, "seed": 1, "space": {"magnitude_prune.sparsity": [0.6, 0.7]}},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    config = SweepConfig.load(path)
    again = SweepConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again == config
    assert again.base.finetune is not None and again.base.finetune.epochs == 1


def test_load_names_the_file(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("grid: {magnitude_prune.sparsity: [2.0]}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        SweepConfig.load(path)


def test_task_keys_are_deterministic_and_ignore_names() -> None:
    config = SweepConfig.from_dict({"grid": {"magnitude_prune.sparsity": [0.5, 0.9]}})
    tasks = sweep_tasks(config)
    assert tasks[0]["name"] == "baseline" and tasks[0]["recipe"] == []
    keys = [task_key(t) for t in tasks]
    assert len(set(keys)) == 3
    assert keys == [task_key(t) for t in sweep_tasks(config)]
    assert task_key({**tasks[1], "name": "other"}) == keys[1]
    assert task_key({**tasks[1], "base": {**tasks[1]["base"], "seed": 1}}) != keys[1]


def test_pareto_flags() -> None:
    accuracy = [0.9, 0.8, 0.95, 0.7, 0.8, 0.9]
    size = [100, 50, 200, 60, 50, 100]
    # 0.7 @ 60 is dominated by 0.8 @ 50; duplicates of a front point are on the front.
    assert pareto_flags(accuracy, size) == [True, True, True, False, True, True]
    assert pareto_flags([], []) == []
