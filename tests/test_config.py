"""Configs validate on construction and round-trip through dicts and YAML."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from modelzip import Int8Config, MagnitudePruneConfig, Recipe, Select
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.errors import ConfigError
from modelzip.core.registry import config_from_dict, get_method, list_methods


@dataclasses.dataclass(frozen=True)
class _Toy(MethodConfig):
    method = "toy_not_registered"
    rate: float = 0.5
    bits: int = 8
    mode: Literal["a", "b"] = "a"
    ranks: tuple[int, ...] = (1, 2)
    limit: float | None = None

    def validate(self) -> None:
        check_range(self, "rate", 0.0, 1.0, high_open=True)
        check_range(self, "bits", 1, 16)


def test_valid_config_and_coercion():
    c = _Toy.from_dict({"rate": 0, "ranks": [3, 4], "limit": 2})
    assert c.rate == 0.0 and isinstance(c.rate, float)
    assert c.ranks == (3, 4)
    assert c.limit == 2.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"rate": 1.0}, ["rate", "1.0", "[0, 1)"]),
        ({"rate": -0.1}, ["rate", "-0.1", "[0, 1)"]),
        ({"bits": 17}, ["bits", "17", "[1, 16]"]),
        ({"bits": 2.5}, ["bits", "2.5", "int"]),
        ({"bits": True}, ["bits", "True", "int"]),
        ({"rate": "high"}, ["rate", "'high'", "float"]),
        ({"rate": float("nan")}, ["rate", "nan"]),
        ({"mode": "c"}, ["mode", "'c'", "'a'", "'b'"]),
        ({"ranks": "12"}, ["ranks", "list of int"]),
        ({"ranks": [1, "x"]}, ["ranks[1]", "'x'"]),
    ],
)
def test_invalid_values_name_field_value_and_range(kwargs, words):
    with pytest.raises(ConfigError) as e:
        _Toy(**kwargs)
    for w in words:
        assert w in str(e.value)


def test_unknown_field_lists_known_ones():
    with pytest.raises(ConfigError, match=r"no field 'sparsty'.*sparsity"):
        MagnitudePruneConfig.from_dict({"sparsty": 0.5})


def test_frozen():
    c = MagnitudePruneConfig(sparsity=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.sparsity = 0.6  # type: ignore[misc]


@pytest.mark.parametrize("name", list_methods())
def test_every_method_round_trips_through_dict(name):
    spec = get_method(name)
    for config in filter(None, (spec.example, spec.noop, spec.config_type())):
        data = config.to_dict()
        assert data["method"] == name
        assert config_from_dict(data) == config


def test_recipe_yaml_round_trip(tmp_path):
    recipe = Recipe(
        (
            MagnitudePruneConfig(sparsity=0.9, select=Select(types=("Linear",), exclude=("fc3",))),
            Int8Config(per_channel=False),
        )
    )
    path = tmp_path / "r.yaml"
    recipe.save(path)
    assert Recipe.load(path) == recipe


def test_recipe_file_in_the_documented_form(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "- {method: magnitude_prune, sparsity: 0.9, select: {types: [Linear], exclude: ['fc3']}}\n"
        "- {method: int8}\n"
    )
    recipe = Recipe.load(path)
    assert recipe.steps[0] == MagnitudePruneConfig(
        sparsity=0.9, select=Select(types=("Linear",), exclude=("fc3",))
    )
    assert recipe.steps[1] == Int8Config()


@pytest.mark.parametrize(
    "text, words",
    [
        ("- {method: nope}\n", ["unknown method 'nope'", "magnitude_prune"]),
        ("- {sparsity: 0.5}\n", ["no 'method:'"]),
        ("- {method: magnitude_prune, sparsity: 1.5}\n", ["step 0", "sparsity=1.5", "[0, 1)"]),
        ("{method: int8}\n", ["list of steps"]),
        ("- [1, 2]\n", ["mapping"]),
        ("- {method: int8, select: {names: ['(']}}\n", ["invalid regular expression"]),
        ("- {method: int8\n", ["not valid YAML"]),
    ],
)
def test_bad_recipe_files(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        Recipe.load(path)
    for w in words:
        assert w in str(e.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        Recipe.load(tmp_path / "missing.yaml")


def test_a_family_with_a_missing_package_leaves_the_others(monkeypatch):
    import builtins
    import sys

    from modelzip.core import registry

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tensorly" or name.startswith("tensorly."):
            raise ModuleNotFoundError(f"No module named {name!r}", name="tensorly")
        return real_import(name, *args, **kwargs)

    registry.list_methods()  # everything registered once, then decompose's methods forgotten
    kept = {k: v for k, v in registry._METHODS.items() if v.family != "decompose"}
    monkeypatch.setattr(registry, "_METHODS", kept)
    monkeypatch.setattr(registry, "_BY_TYPE", {v.config_type: v for v in kept.values()})
    saved = {k: v for k, v in sys.modules.items() if k.startswith("modelzip.decompose")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_UNAVAILABLE", {})
    from modelzip.core import module

    monkeypatch.setattr(module, "_LAYERS", dict(module._LAYERS))  # half-imported layers vanish

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.warns(UserWarning, match="tensorly"):
        names = registry.list_methods()
    monkeypatch.setattr(builtins, "__import__", real_import)
    for k, v in saved.items():
        sys.modules[k] = v
    assert "magnitude_prune" in names and "svd" not in names
    with pytest.raises(Exception, match=r"decompose \(needs tensorly\)"):
        registry.get_method("svd")
