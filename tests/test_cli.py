"""The modelzip command: every subcommand end to end on small data, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelzip.cli import build_parser, main
from modelzip.models import create

RECIPE = "- {method: magnitude_prune, sparsity: 0.8, select: {types: [Linear], exclude: ['fc3']}}\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "m.mzip"
    assert (
        main(
            [
                "train",
                "lenet300",
                "--dataset",
                "digits",
                "--epochs",
                "10",
                "--out",
                str(path),
                "--json",
            ]
        )
        == 0
    )
    return str(path)


def test_help_of_every_subcommand(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in [*sub.choices, None]:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"] if name else ["--help"])
        assert e.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_list_json(capsys):
    code, out, _ = run(capsys, "list", "--json")
    data = json.loads(out)
    assert code == 0
    assert {"magnitude_prune", "int8"} <= {m["name"] for m in data["methods"]}
    assert "lenet300" in {m["name"] for m in data["models"]}
    assert "mnist" in {d["name"] for d in data["datasets"]}


def test_train_eval_compress(capsys, trained, tmp_path):
    capsys.readouterr()
    code, out, _ = run(capsys, "eval", trained, "--dataset", "digits", "--json")
    assert code == 0
    stats = json.loads(out)
    for key in ("accuracy", "params", "size_bytes", "macs", "latency_ms"):
        assert stats[key] is not None, key
    assert stats["accuracy"] > 0.5  # ten epochs on digits are far above chance (0.1)

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out_file = tmp_path / "c.mzip"
    code, out, _ = run(
        capsys,
        "compress",
        trained,
        "--recipe",
        str(recipe),
        "--dataset",
        "digits",
        "--finetune-epochs",
        "1",
        "--out",
        str(out_file),
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    for part in ("before", "after"):
        for key in ("accuracy", "params", "size_bytes", "macs", "latency_ms"):
            assert report[part][key] is not None, (part, key)
    assert report["after"]["params"] < report["before"]["params"]
    assert [c["name"] for c in report["layers"]] == ["fc1", "fc2"]
    assert report["file_bytes"] == out_file.stat().st_size

    code, out, _ = run(
        capsys, "eval", str(out_file), "--dataset", "digits", "--json", "--no-latency"
    )
    assert code == 0
    assert json.loads(out)["accuracy"] == pytest.approx(report["after"]["accuracy"])


def test_inspect_table_and_json(capsys):
    code, out, _ = run(capsys, "inspect", "lenet5", "--json", "--no-latency")
    data = json.loads(out)
    assert code == 0
    assert [r["name"] for r in data["layers"] if r["macs"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert data["params"] == 431_080
    code, out, _ = run(capsys, "inspect", "lenet300", "--no-latency")
    assert code == 0 and "fc1" in out and "235,500" in out


def test_estimate_model_and_scalesim_topology(capsys, tmp_path):
    code, out, _ = run(capsys, "estimate", "lenet5", "--accelerator", "tpu", "--json")
    data = json.loads(out)
    assert code == 0 and data["accelerator"] == "tpu"
    assert [r["layer"] for r in data["table"]][:4] == ["conv1", "conv2", "fc1", "fc2"]
    assert sum(layer["macs"] for layer in data["layers"]) == 2_293_000
    topo = tmp_path / "layers.csv"
    topo.write_text(
        "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
        "Num Filter, Strides,\nconv1, 28, 28, 5, 5, 1, 20, 1,\n"
    )
    code, out, _ = run(capsys, "estimate", str(topo), "--accelerator", "os")
    assert code == 0 and "conv1" in out
    code, _, err = run(capsys, "estimate", "lenet5", "--accelerator", "nosuch")
    assert code == 2 and "unknown accelerator 'nosuch'" in err


def test_user_npz_dataset(capsys, tmp_path, trained):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
        y_train=rng.integers(0, 10, 40),
        x_test=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8),
        y_test=rng.integers(0, 10, 20),
    )
    code, out, _ = run(capsys, "eval", trained, "--dataset", str(path), "--json", "--no-latency")
    assert code == 0 and 0.0 <= json.loads(out)["accuracy"] <= 1.0


def _weights_with_nan(tmp_path) -> str:
    m = create("lenet300")
    state = m.state_dict()
    state["fc2.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["eval", "nosuchmodel", "--dataset", "digits"], "unknown model 'nosuchmodel'"),
        (["eval", "lenet300", "--dataset", "nosuchdata"], "unknown dataset 'nosuchdata'"),
        (["eval", "missing.mzip", "--dataset", "digits"], "no such file"),
        (["inspect", "no_such_pkg.mod:factory", "--input-shape", "1,8,8"], "cannot import"),
        (["compress", "lenet300", "--recipe", "missing.yaml", "--out", "x.mzip"], "no such file"),
    ],
)
def test_bad_input_gives_clear_error(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error:") and words in err
    assert "Traceback" not in err + out


@pytest.mark.parametrize(
    "recipe, words",
    [
        ("- {method: nosuch}\n", "unknown method 'nosuch'"),
        ("- {method: magnitude_prune, sparsity: 2}\n", "sparsity=2.0 is out of range"),
    ],
)
def test_bad_recipe_gives_clear_error(capsys, tmp_path, trained, recipe, words):
    path = tmp_path / "r.yaml"
    path.write_text(recipe)
    code, _, err = run(
        capsys,
        "compress",
        trained,
        "--recipe",
        str(path),
        "--dataset",
        "digits",
        "--out",
        str(tmp_path / "o.mzip"),
    )
    assert code == 2 and words in err and "Traceback" not in err


def test_nan_weights_give_clear_error(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "eval",
        "lenet300",
        "--weights",
        _weights_with_nan(tmp_path),
        "--dataset",
        "mnist",
        "--no-latency",
    )
    assert code == 2 and "NaN" in err and "Traceback" not in err


def test_malformed_npz_gives_clear_error(capsys, tmp_path, trained):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8)), y_train=np.zeros(4, dtype=np.int64))
    code, _, err = run(capsys, "eval", trained, "--dataset", str(path))
    assert code == 2 and "x_test" in err and "Traceback" not in err


def test_a_deployed_line_names_the_engine():
    """Several engines run an Int8Linear: compress's line says which one a layer got; a layer
    left as it is, or made plain dense, needs no name."""
    from modelzip.cli import _deployed_line

    row = {"name": "fc1", "before": "Int8Linear", "after": "Int8Linear",
           "kernel": "native linear_dynamic", "reason": "measured 1.20× faster"}  # fmt: skip
    assert _deployed_line(row) == (
        "deployed fc1: Int8Linear -> Int8Linear on native linear_dynamic (measured 1.20× faster)"
    )
    for kernel in ("unchanged", "dense", ""):
        assert " on " not in _deployed_line({**row, "kernel": kernel})
