"""The shape of the package (issue #19): what ``import modelzip`` costs, and who imports whom.

The import graph is read from the source (AST), with every import counted: module level and
function level, ``if TYPE_CHECKING`` included. An edge goes to the module whose code the statement
needs: ``from pkg import name`` to ``pkg.name`` when that is a module, else to ``pkg`` (its
``__init__``); the parent packages that Python runs first are not edges, or everything would
depend on ``modelzip/__init__``. ``importlib.import_module("...")`` with a string (the method
registry's families, the zoo's modules, the CLI's subcommands) is run-time wiring, not an edge.

Rules:

- ``import modelzip`` loads no module of the compact family, the training loop or the zoo;
- no import circle between modules;
- no module imports a module of a higher layer (:data:`LAYERS`, lowest first); modules of one
  layer may import each other.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modelzip"

# The zoo's model modules: built from the families' layers, so they sit above them, while the
# registry, the shapes and the common layers of modelzip.models sit low (serialize uses them).
ZOO = (
    "modelzip.models.char_lstm",
    "modelzip.models.compact_cnn",
    "modelzip.models.lenet",
    "modelzip.models.resnet",
    "modelzip.models.rnn_zoo",
    "modelzip.models.twn_net",
    "modelzip.models.vgg",
)

#: The layers, lowest first: (what it is, module prefixes). A module belongs to the layer of its
#: longest matching prefix; the root package ``modelzip`` is matched only exactly.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core: configs, registry, base layer, counting, files' integrity", ("modelzip.core",)),
    (
        "records and models of cost: data, reports, recipes, timing, hardware, model registry",
        (
            "modelzip.command_output",
            "modelzip.data",
            "modelzip.hardware",
            "modelzip.lifeline",
            "modelzip.measure",
            "modelzip.models",
            "modelzip.progress",
            "modelzip.recipe",
            "modelzip.report",
            "modelzip.train_checkpoint",
        ),
    ),
    ("files: the .mzip format and checkpoints", ("modelzip.checkpoint", "modelzip.serialize")),
    ("the training loop", ("modelzip.train",)),
    ("the compress/measure/deploy API", ("modelzip.api", "modelzip.deploy")),
    ("families without kernels", ("modelzip.compact", "modelzip.decompose", "modelzip.prune")),
    ("kernels: executable forms (some wrap decompose's layers)", ("modelzip.kernels",)),
    ("quantize: its int8 layers run on the kernels", ("modelzip.quantize",)),
    ("joint methods, built from the families", ("modelzip.joint",)),
    ("export and the zoo, built on the families' layers", ("modelzip.export", *ZOO)),
    (
        "tools: baselines, model loading, search, sweeps, reports, demo",
        (
            "modelzip.baselines",
            "modelzip.compact.nas",
            "modelzip.demo",
            "modelzip.docs_gen",
            "modelzip.model_source",
            "modelzip.reporting",
            "modelzip.sweep",
        ),
    ),
    (
        "subcommands that live with their family",
        (
            "modelzip.compact.command",
            "modelzip.export.command",
            "modelzip.joint.auto_cli",
            "modelzip.joint.command",
            "modelzip.reporting.command",
            "modelzip.sweep.command",
        ),
    ),
    ("entry points: the command line and the package's public names", ("modelzip.cli",)),
)
ROOT_LAYER = len(LAYERS) - 1


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _targets(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                # ``import a.b.c`` needs a.b.c (or the deepest part of it that is a module)
                for end in range(len(parts), 0, -1):
                    if ".".join(parts[:end]) in modules:
                        yield ".".join(parts[:end])
                        break
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    yield sub
                elif base in modules:
                    yield base


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (itself excluded)."""
    modules = _modules(package)
    return {
        name: {t for t in _targets(name, path, modules) if t != name}
        for name, path in modules.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``module`` (KeyError for a module no layer names)."""
    if module == "modelzip":
        return ROOT_LAYER
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise KeyError(module)
    return best


def _upward(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a)}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_import_modelzip_loads_neither_compact_nor_train_nor_the_zoo() -> None:
    code = "import json, sys, modelzip; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = json.loads(done.stdout)
    assert "modelzip.core.registry" in loaded  # the probe saw modelzip's modules at all
    heavy = ("modelzip.compact", "modelzip.train", "modelzip.models")
    assert [m for m in loaded if any(m == h or m.startswith(h + ".") for h in heavy)] == []


def test_public_names_resolve_and_are_listed() -> None:
    import modelzip

    for name in modelzip.__all__:
        assert getattr(modelzip, name) is not None, name
    assert set(modelzip.__all__) <= set(dir(modelzip))
    assert modelzip.models.create is not None  # a subpackage reached as an attribute
    with pytest.raises(AttributeError):
        modelzip.no_such_name  # noqa: B018


def test_the_graph_counts_every_kind_of_import(tmp_path: Path) -> None:
    sources = {
        "__init__.py": "from pkg import a\n",  # a submodule: the edge goes to it
        "a.py": "def f():\n    from pkg.b import x\n",  # function level
        "b.py": "import pkg.c as c\n\nx = 1\n",
        "c.py": "from . import a\nfrom pkg import VERSION\n",  # relative; a name of __init__
        "d.py": "import os\n\nfrom pkg.a import f\n",
    }
    (tmp_path / "pkg").mkdir()
    for name, text in sources.items():
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg", "pkg.a"},
        "pkg.d": {"pkg.a"},
    }
    circles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert circles == [["pkg", "pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_circle(graph: dict[str, set[str]]) -> None:
    circles = sorted(sorted(c) for c in strongly_connected(graph) if len(c) > 1)
    assert circles == []


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    unplaced = []
    for module in graph:
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert unplaced == [], "add these modules to a layer of LAYERS"


def test_no_module_imports_a_higher_layer(graph: dict[str, set[str]]) -> None:
    upward = sorted(_upward(graph))
    described = [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})" for a, b in upward
    ]
    assert described == []


def test_the_zoo_is_listed_for_lazy_loading() -> None:
    """Every module of modelzip.models that registers a model is in ``ZOO_MODULES``, which the
    registry imports on first use; a zoo module missing there would never register."""
    from modelzip.models.registry import ZOO_MODULES

    registering = set()
    for name, path in _modules().items():
        if name.startswith("modelzip.models.") and "@register_model(" in path.read_text("utf-8"):
            registering.add(name)
    assert registering == set(ZOO_MODULES) == set(ZOO)


def test_no_module_is_named_like_a_standard_library_module() -> None:
    # Inside the package an absolute import is unambiguous, but tools, tracebacks and readers are
    # not: ``html.py`` next to ``from html import escape`` reads as the standard one.
    clashes = [n for n in _modules() if n.rpartition(".")[2] in sys.stdlib_module_names]
    assert clashes == []
