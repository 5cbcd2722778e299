"""`modelzip estimate --topology FILE` without a model; the accelerator presets in `list`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelzip.cli import main
from modelzip.core.errors import ConfigError
from modelzip.hardware import cli_estimate, list_accelerators
from modelzip.hardware.command import needs_model
from modelzip.hardware.presets import accelerator_description

TOPOLOGY = (
    "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
    "Num Filter, Strides,\n"
    "Conv1, 16, 16, 3, 3, 8, 12, 2,\n"
    "Conv2, 8, 8, 3, 3, 12, 16, 1,\n"
)


@pytest.fixture
def topology(tmp_path: Path) -> str:
    path = tmp_path / "net.csv"
    path.write_text(TOPOLOGY)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_topology_without_model_json(capsys, topology) -> None:
    code, out, err = run(
        capsys, "estimate", "--topology", topology, "--accelerator", "tpu", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["accelerator"] == "tpu"
    assert [r["layer"] for r in data["table"]] == ["Conv1", "Conv2", "TOTAL"]
    # SCALE-Sim's output size: ceil((16 - 3 + 2) / 2) = 8, then 8 - 3 + 1 = 6
    macs = [layer["macs"] for layer in data["layers"]]
    assert macs == [8 * 8 * 12 * 8 * 9, 6 * 6 * 16 * 12 * 9]
    # the same layers as the topology given in the model's place
    code, out, _ = run(capsys, "estimate", topology, "--accelerator", "tpu", "--json")
    assert code == 0 and json.loads(out)["totals"] == data["totals"]


def test_estimate_topology_without_model_table(capsys, topology) -> None:
    code, out, err = run(capsys, "estimate", "--topology", topology, "--accelerator", "os")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("os: energy in pJ")
    assert [line.split()[0] for line in lines[2:]] == ["Conv1", "Conv2", "TOTAL"]


@pytest.mark.parametrize("extra", [[], ["lenet5"]], ids=["neither", "both"])
def test_estimate_needs_exactly_one_source(capsys, topology, extra) -> None:
    argv = ["estimate", *extra] + (["--topology", topology] if extra else [])
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: estimate ")
    assert ("not both" in err) == bool(extra)


def test_needs_model() -> None:
    assert needs_model("lenet5", None) is True
    assert needs_model("layers.csv", None) is False
    assert needs_model(None, "layers.csv") is False
    with pytest.raises(ConfigError, match="needs a model or --topology"):
        needs_model(None, None)
    with pytest.raises(ConfigError, match="not both"):
        needs_model("lenet5", "layers.csv")


def test_cli_estimate_refuses_topology_with_workloads(topology) -> None:
    from modelzip.hardware.scalesim_io import workloads_from_topology_csv

    layers = workloads_from_topology_csv(topology)
    with pytest.raises(ConfigError, match="not both"):
        cli_estimate({"topology": topology}, workloads=layers)
    with pytest.raises(ConfigError, match="not both"):
        cli_estimate({"topology": topology, "model_or_file": topology})
    assert len(cli_estimate({"topology": topology})["layers"]) == 2


def test_list_shows_accelerator_presets(capsys) -> None:
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    rows = json.loads(out)["accelerators"]
    assert [r["name"] for r in rows] == list_accelerators()
    for r in rows:
        assert r["description"] == accelerator_description(r["name"])
        assert r["description"] and "\n" not in r["description"]
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "accelerators" in out
    for name in list_accelerators():
        assert f" {name} " in out, name
    assert "weight-stationary" in out  # the tpu's description


def test_accelerator_description_unknown() -> None:
    with pytest.raises(KeyError, match="unknown accelerator 'nosuch'"):
        accelerator_description("nosuch")


def test_estimate_measures_activation_sparsity(capsys) -> None:
    """The CLI runs the model once on its sample: ReLU zeros reach the zero-skipping engine."""
    import torch

    from modelzip.core.counting import collect_workloads
    from modelzip.models import create
    from modelzip.models.shapes import sample_input

    code, out, err = run(capsys, "estimate", "vgg_small", "--accelerator", "cnvlutin", "--json")
    assert code == 0, err
    measured = json.loads(out)
    torch.manual_seed(0)
    model = create("vgg_small")
    blind = cli_estimate(
        {"accelerator": "cnvlutin"}, workloads=collect_workloads(model, sample_input(model, 1))
    )
    assert measured["totals"]["macs"] == blind["totals"]["macs"]
    assert measured["totals"]["cycles"] < blind["totals"]["cycles"]
    assert measured["totals"]["energy"]["mac"] < blind["totals"]["energy"]["mac"]


def test_estimate_dataset_sample(capsys, tmp_path: Path) -> None:
    """--dataset: the statistics come from the data set's test images, not a random sample."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    x[:2] = 0.0  # the first two test images are black: only they are used with --batch 2
    y = np.zeros(4, dtype=np.int64)
    path = tmp_path / "images.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    args = ("estimate", "lenet300", "--accelerator", "cnvlutin", "--json", "--batch", "2")
    torch.manual_seed(0)  # the model's untrained weights, the same as below
    code, out, err = run(capsys, *args, "--dataset", str(path))
    assert code == 0, err
    black = json.loads(out)
    code, out, err = run(capsys, *args)
    random = json.loads(out)
    # The same numbers as measuring the first two test images directly, and not the random ones.
    from modelzip.core.activation_stats import measured_workloads
    from modelzip.models import create

    torch.manual_seed(0)
    model = create("lenet300")
    expected = cli_estimate(
        {"accelerator": "cnvlutin"}, workloads=measured_workloads(model, torch.from_numpy(x[:2]))
    )
    assert black["totals"] == expected["totals"]
    assert black["totals"]["cycles"] != random["totals"]["cycles"]
