"""Training-time compression from the shell: ``train --grad-compress`` (gradients through a DDP
communication hook, one process or two) and ``nas --algorithm darts``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_harness import free_port

from modelzip.cli import main
from modelzip.core.errors import ConfigError
from modelzip.train import TrainConfig, train

needs_dist = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> str:
    """600 + 100 random 8x8 images, the class set by which quadrant is brightest."""
    rng = np.random.default_rng(0)
    x = rng.random((700, 1, 8, 8), dtype=np.float32)
    quads = np.stack([x[:, 0, :4, :4], x[:, 0, :4, 4:], x[:, 0, 4:, :4], x[:, 0, 4:, 4:]], 1)
    y = quads.sum((2, 3)).argmax(1).astype(np.int64)
    path = tmp_path_factory.mktemp("gc") / "tiny.npz"
    np.savez(path, x_train=x[:600], y_train=y[:600], x_test=x[600:], y_test=y[600:])
    return str(path)


def _train_argv(npz: str, out: Path, *extra: str) -> list[str]:
    return ["train", "lenet300", "--dataset", npz, "--epochs", "1", "--out", str(out), *extra]


@needs_dist
@pytest.mark.parametrize("scheme", ["terngrad", "qsgd", "onebit", "dgc"])
def test_train_grad_compress_runs_the_hook(tiny_npz, tmp_path, capsys, scheme):
    out = tmp_path / "m.mzip"
    assert main(_train_argv(tiny_npz, out, "--grad-compress", scheme, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["out"] == str(out)
    gc = report["grad_compression"]
    assert gc["scheme"] == scheme and gc["world_size"] == 1 and gc["rank"] == 0
    # 540 training images (10% held out) in batches of 128: 4 steps, one bucket each at least.
    assert gc["hook_calls"] >= 4
    assert 0 < gc["payload_bytes_per_step"] < gc["fp32_bytes_per_step"] / 4
    assert gc["ratio"] == pytest.approx(gc["fp32_bytes_per_step"] / gc["payload_bytes_per_step"])
    assert not dist.is_initialized()  # the one-process group is torn down again


def _weights(config: TrainConfig, data) -> torch.Tensor:
    from modelzip.model_source import zoo_kwargs
    from modelzip.models import resolve_model

    torch.manual_seed(0)
    model = resolve_model("lenet300", **zoo_kwargs("lenet300", data))
    train(model, data, config, progress=False)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@needs_dist
def test_the_hook_changes_the_gradients_and_dgc_sending_all_does_not(digits):
    base = TrainConfig(epochs=1, batch_size=256, lr=0.05, val_size=0, steps_per_epoch=3)
    plain = _weights(base, digits)
    # DGC sending every entry averages one process's exact gradients: the plain run.
    assert torch.equal(_weights(base.replace(grad_compress="dgc", dgc_ratio=1.0), digits), plain)
    tern = _weights(base.replace(grad_compress="terngrad"), digits)
    assert not torch.allclose(tern, plain)


def test_bad_grad_compress_names_the_option_and_choices(tiny_npz, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_train_argv(tiny_npz, tmp_path / "m.mzip", "--grad-compress", "zip"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--grad-compress" in err and "'zip'" in err
    for name in ("terngrad", "qsgd", "onebit", "dgc"):
        assert name in err


@pytest.mark.parametrize(
    "scheme, flag, value, words",
    [
        ("qsgd", "--grad-bits", "1", "grad_bits=1 is out of range; allowed [2, 8]"),
        ("dgc", "--dgc-ratio", "0", "dgc_ratio=0.0 is out of range; allowed (0, 1]"),
        ("terngrad", "--grad-bits", "3", "--grad-bits applies to --grad-compress qsgd"),
        (None, "--dgc-ratio", "0.1", "--dgc-ratio applies to --grad-compress dgc"),
    ],
)
def test_bad_grad_knob_names_field_value_and_range(
    tiny_npz, tmp_path, capsys, scheme, flag, value, words
):
    choice = ["--grad-compress", scheme] if scheme else []
    argv = _train_argv(tiny_npz, tmp_path / "m.mzip", *choice, flag, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err
    assert not (tmp_path / "m.mzip").exists()


def test_config_refuses_unknown_scheme_and_round_trips():
    with pytest.raises(ConfigError, match=r"grad_compress='zip' .*'terngrad' \| 'qsgd'"):
        TrainConfig(grad_compress="zip")  # type: ignore[arg-type]
    config = TrainConfig(grad_compress="qsgd", grad_bits=3)
    assert TrainConfig.from_dict(config.to_dict()) == config


def _rank(rank: int, world: int, port: int, npz: str, out: str) -> None:
    """One process of a ``torchrun``-like launch: the environment names the group."""
    import modelzip.train

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    real_train = modelzip.train.train

    def spy(model, *args, **kwargs):  # keeps each rank's final weights for the comparison
        result = real_train(model, *args, **kwargs)
        weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        torch.save(weights, Path(out) / f"rank{rank}.pt")
        return result

    modelzip.train.train = spy
    argv = _train_argv(npz, Path(out) / "m.mzip", "--grad-compress", "terngrad", "--quiet")
    code = main(argv)
    (Path(out) / f"code{rank}").write_text(str(code))
    # As in tests/ddp_harness.py: gloo's threads sometimes abort at interpreter teardown.
    os._exit(0)


@needs_dist
def test_two_processes_end_with_identical_weights(tiny_npz, tmp_path, capsys):
    mp.spawn(_rank, args=(2, free_port(), tiny_npz, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"code{r}").read_text() for r in (0, 1)] == ["0", "0"]
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(w0, w1)
    assert (tmp_path / "m.mzip").is_file()  # written by rank 0 alone


def test_nas_darts_tiny_budget(tmp_path, capsys):
    out = tmp_path / "darts"
    argv = ["nas", "--algorithm", "darts", "--dataset", "digits", "--epochs", "1",
            "--train-size", "128", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "nas.json").read_text())
    assert saved["algorithm"] == "darts" and len(saved["history"]) == 1
    for kind in ("normal", "reduce"):
        cell = saved["genotype"][kind]
        assert cell and all(op != "none" for _, _, op in cell)
        assert f"{cell[0][0]}->{cell[0][1]} {cell[0][2]}" in printed
    assert main([*argv, "--json"]) == 0  # resumed from the checkpoint: the same genotype
    assert json.loads(capsys.readouterr().out)["genotype"] == saved["genotype"]
