"""The docs: recipes.md is generated and current; every family has a page; examples parse."""

from __future__ import annotations

import re
import textwrap

import yaml

from modelzip.core.registry import list_methods
from modelzip.docs_gen import DEFAULT_PATH, field_ranges, render_recipe_reference


def test_committed_recipe_reference_is_up_to_date() -> None:
    assert DEFAULT_PATH.is_file(), "run: python -m modelzip.docs_gen"
    assert DEFAULT_PATH.read_text() == render_recipe_reference(), (
        "docs/recipes.md is out of date: run python -m modelzip.docs_gen"
    )


def test_every_method_is_documented() -> None:
    text = render_recipe_reference()
    for name in list_methods():
        assert f"### `{name}`" in text


def test_ranges_are_read_from_validate() -> None:
    from modelzip.prune.magnitude import MagnitudePruneConfig
    from modelzip.train import TrainConfig

    assert field_ranges(MagnitudePruneConfig)["sparsity"] == "[0, 1)"
    ranges = field_ranges(TrainConfig)
    assert ranges["lr"] == "(0, inf)" and ranges["momentum"] == "[0, 1)"


DOCS = DEFAULT_PATH.parent
BLOCK = re.compile(r"```(yaml|python)\n(.*?)```", re.S)


def _blocks(kind: str) -> list[tuple[str, str]]:
    return [
        (path.name, textwrap.dedent(m.group(2)))  # a block inside a list item is indented
        for path in sorted(DOCS.glob("*.md"))
        for m in BLOCK.finditer(path.read_text())
        if m.group(1) == kind
    ]


def test_every_family_has_a_page() -> None:
    from modelzip.core.registry import get_method

    for name in list_methods():
        page = DOCS / f"{get_method(name).family}.md"
        assert page.is_file(), f"no docs page for family {get_method(name).family}"
        assert f"`{name}`" in page.read_text(), f"{name} is missing from {page.name}"


def test_yaml_examples_in_the_docs_are_valid_recipes_or_sweeps() -> None:
    from modelzip.recipe import Recipe
    from modelzip.sweep import SweepConfig

    blocks = _blocks("yaml")
    assert len(blocks) >= 8
    for page, text in blocks:
        data = yaml.safe_load(text)
        if isinstance(data, list):
            Recipe.from_list(data)
        else:
            assert SweepConfig.from_dict(data).points(), page


def test_python_examples_in_the_docs_compile() -> None:
    blocks = _blocks("python")
    assert len(blocks) >= 6
    for page, text in blocks:
        compile(text, page, "exec")
