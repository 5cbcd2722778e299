"""The pure helpers of ``benchmarks/deploy.py``: ISA label and int8 target, recipe text, JSON
parsing, deployment summaries (no commands run, nothing timed)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def deploy():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("deploy")
    finally:
        sys.path.remove(str(BENCH))
        for name in ("deploy", "_common"):  # top-level names, not to be found by other tests
            sys.modules.pop(name, None)


VNNI = {"machine": "x86_64", "torch_capability": "AVX512", "int8_saturation": None}
AVX512 = {"machine": "x86_64", "torch_capability": "AVX512",
          "int8_saturation": "the CPU lacks AVX-512 VNNI"}  # fmt: skip
AVX2 = {"machine": "x86_64", "torch_capability": "AVX2",
        "int8_saturation": "PyTorch runs its AVX2 kernels"}  # fmt: skip
ARM = {"machine": "aarch64", "torch_capability": "DEFAULT", "int8_saturation": None}


@pytest.mark.parametrize(
    ("isa", "label", "target"),
    [(VNNI, "AVX-512 VNNI", 2.5), (AVX512, "AVX-512", 1.8), (AVX2, "AVX2", 1.8),
     (ARM, "aarch64", 1.8)],
)  # fmt: skip
def test_isa_label_and_int8_target(deploy, isa, label, target):
    assert deploy.isa_label(isa) == label
    assert deploy.int8_target(isa) == target


def test_recipe_text_is_yaml_the_cli_reads(deploy, tmp_path):
    from modelzip.recipe import Recipe

    path = tmp_path / "r.yaml"
    path.write_text(deploy.recipe_text([{"method": "int8", "activations": "static"}]))
    assert Recipe.load(str(path)).to_list()[0]["activations"] == "static"
    path.write_text(deploy.recipe_text([]))
    assert Recipe.load(str(path)).to_list() == []


def test_last_json_skips_lines_before_the_object(deploy):
    out = "warning: something\n" + json.dumps({"speedup": 2.0, "x": [1, 2]}, indent=2) + "\n"
    assert deploy.last_json(out) == {"speedup": 2.0, "x": [1, 2]}
    with pytest.raises(ValueError, match="no JSON"):
        deploy.last_json("error only\n")


def test_forms_counts_kernels_or_names_the_kept_classes(deploy):
    rows = [{"kernel": "CSR"}, {"kernel": "CSR"}, {"kernel": "dense"}]
    assert deploy.forms(rows, "MaskedLinear") == "CSR×2, dense×1"
    assert deploy.forms([], "StaticInt8Linear") == "StaticInt8Linear"
    layers = [{"after": "StaticInt8Linear"}, {"after": "StaticInt8Conv2d"}, {"after": None}]
    assert deploy.layer_classes(layers) == "StaticInt8Conv2d, StaticInt8Linear"
    assert deploy.layer_classes([]) == "-"


def test_median_speedup(deploy):
    evals = [{"speedup": s, "latency_ms": ms, "dense_latency_ms": 2 * ms}
             for s, ms in ((1.0, 3.0), (3.0, 1.0), (2.0, 2.0))]  # fmt: skip
    assert deploy.median_speedup(evals) == (2.0, 2.0, 4.0)


def test_cli_env_pins_threads_and_keeps_a_chosen_wait_policy(deploy, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    env = deploy.cli_env(2, {"ATEN_CPU_CAPABILITY": "avx2"})
    assert env["OMP_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == "2"
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert deploy.cli_env(1)["OMP_WAIT_POLICY"] == "PASSIVE"


def test_image_folder_key_gives_eval_batch_and_data_flags(deploy):
    key = deploy.image_folder_key(224, 8, 32)
    assert key == "images224-b8-c32"
    assert deploy.eval_batch(key) == 8
    assert deploy.eval_batch("mnist64") == 64 and deploy.eval_batch("mnist1") == 1
    rn18 = deploy.Model("resnet18", "torchvision.models:resnet18", key, False, image_size=224)
    assert deploy.data_flags(rn18, "/tmp/x") == ["--dataset", "/tmp/x", "--image-size", "224"]
    lenet = deploy.Model("lenet5", "lenet5", "mnist", True)
    assert deploy.data_flags(lenet, "mnist") == ["--dataset", "mnist"]
