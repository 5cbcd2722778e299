"""Safe loading: no pickle in modelzip's formats, weights-only torch files, and an explicit
opt-in before a file (or a command line) can make modelzip import code from outside the
installed packages."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

import modelzip
from modelzip.cli import main
from modelzip.core.errors import ModelError
from modelzip.models import build_from_source, resolve_model

PACKAGE = Path(modelzip.__file__).parent
#: Files that may mention pickle, and why. Each must keep its reason true.
PICKLE_ALLOWED = {
    # MNIST ships as a third-party pickle; it is read with an Unpickler whose find_class allows
    # numpy's array constructors only.
    "data/images.py": "find_class",
}


pytestmark = pytest.mark.attack("Pickle payloads and code outside the installed packages")


def _sources() -> list[tuple[str, str]]:
    return [(str(p.relative_to(PACKAGE)), p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))]


def test_no_pickle_in_the_package():
    for name, text in _sources():
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        if re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", code, re.M):
            assert name in PICKLE_ALLOWED, f"{name} imports pickle"
            assert PICKLE_ALLOWED[name] in code, f"{name} no longer restricts unpickling"
        assert "allow_pickle=True" not in code, f"{name} loads numpy pickles"


def test_every_torch_load_is_weights_only():
    for name, text in _sources():
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.end() : text.find(")", match.end()) + 1]
            line = text[: match.start()].rsplit("\n", 1)[-1]
            if "``" in line or line.lstrip().startswith("#"):
                continue  # documentation
            assert "weights_only=True" in call, f"{name}: torch.load({call} without weights_only"


def test_user_checkpoint_with_code_is_refused(tmp_path):
    from modelzip.checkpoint import load_user_weights

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Evil()}, path)
    with pytest.raises(ModelError, match="weights_only"):
        load_user_weights(torch.nn.Linear(1, 1), path)


MODULE = """
import pathlib
from torch import nn
pathlib.Path({marker!r}).write_text("imported")

def factory(width=3):
    return nn.Sequential(nn.Linear(4, width))
"""


@pytest.fixture
def outside_module(tmp_path, monkeypatch):
    """A module on sys.path but outside the installed packages; importing it leaves a marker."""
    name = "modelzip_untrusted_models_test"
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{name}.py").write_text(MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name, marker
    sys.modules.pop(name, None)


def test_outside_module_needs_the_opt_in(outside_module):
    name, marker = outside_module
    with pytest.raises(ModelError, match="trust_remote_code=True"):
        resolve_model(f"{name}:factory")
    assert not marker.exists() and name not in sys.modules  # nothing was imported
    model = resolve_model(f"{name}:factory", trust_remote_code=True, width=5)
    assert marker.exists() and model[0].out_features == 5


def test_saved_file_naming_outside_code_needs_the_opt_in(outside_module, tmp_path):
    name, marker = outside_module
    model = resolve_model(f"{name}:factory", trust_remote_code=True)
    path = modelzip.save(model, tmp_path / "m.mzip")
    sys.modules.pop(name)  # a new process that has not imported it
    marker.unlink()
    with pytest.raises(ModelError, match="not an installed package"):
        modelzip.load(path)
    assert not marker.exists()
    loaded = modelzip.load(path, trust_remote_code=True)
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x))

    sys.modules.pop(name)
    marker.unlink()
    args = ["inspect", str(path), "--input-shape", "1,4", "--no-latency", "--json"]
    assert main(args) == 2 and not marker.exists()
    assert main([*args, "--trust-remote-code"]) == 0 and marker.exists()


def test_installed_and_imported_code_needs_no_opt_in():
    model = resolve_model("modelzip.models.lenet:lenet300")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    source = {"kind": "factory", "ref": "torch.nn:Linear", "kwargs": {"in_features": 2,
              "out_features": 3}}  # fmt: skip
    # Installed, but not registered: a file may not call it; the caller may.
    with pytest.raises(ModelError, match="not a registered model factory"):
        build_from_source(json.loads(json.dumps(source)))
    assert build_from_source(source, trust_remote_code=True).out_features == 3


@pytest.mark.parametrize("ref", ["os:system", "subprocess:run", "builtins:eval", "shutil:rmtree"])
def test_standard_library_is_refused_even_with_the_opt_in(ref):
    with pytest.raises(ModelError, match="standard library"):
        build_from_source({"kind": "factory", "ref": ref, "kwargs": {}}, trust_remote_code=True)
