"""Selectors pick layers by type, name pattern and exclusion."""

from __future__ import annotations

from torch import nn

from modelzip import MagnitudePruneConfig, Select, compress


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(4 * 24 * 24, 10),
        nn.Linear(10, 10),
    )


def _names(select: Select, default=("Linear", "Conv2d")) -> list[str]:
    return [n for n, _ in select.select(_model(), default)]


def test_defaults_pick_method_types():
    assert _names(Select()) == ["0", "1.0", "3", "4"]
    assert _names(Select(), default=("Linear",)) == ["3", "4"]


def test_types_names_exclude():
    assert _names(Select(types=("Conv2d",))) == ["0", "1.0"]
    assert _names(Select(names=(r"1\..*",))) == ["1.0"]
    assert _names(Select(exclude=("4", r"1\..*"))) == ["0", "3"]
    # fullmatch: "1" alone does not select "1.0"
    assert _names(Select(names=("1",))) == []


def test_selector_in_compress_leaves_excluded_layers():
    model = _model()
    small, report = compress(
        model, MagnitudePruneConfig(sparsity=0.5, select=Select(exclude=("4",))), measure=False
    )
    assert [c.name for c in report.layers] == ["0", "1.0", "3"]
    assert type(small[4]) is nn.Linear
