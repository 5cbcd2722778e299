"""Training checkpoints: an interrupted run, rerun, ends with the weights of an uninterrupted one.

In process (an exception stops training mid-epoch) for SGD with momentum and Adam, with dropout
and augmentation drawing random numbers, so that model, optimizer and both RNG states must all
be restored; test_interruptions.py kills the command-line run with SIGKILL.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.core.errors import ConfigError
from modelzip.data import Dataset
from modelzip.train import TrainConfig, train

pytestmark = pytest.mark.attack("Killed or interrupted runs (SIGKILL, ENOSPC)")


def tiny_data(n: int = 96) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 6, 6, generator=g)
    y = (x.mean(dim=(1, 2, 3)) * 3).long().clamp(0, 2)
    return Dataset(
        name="tiny", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32], num_classes=3,
        classes=("a", "b", "c"),
    )  # fmt: skip


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)
    )


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def callback(model, s, epoch):
        if s == step:
            raise _Stop

    return callback


CONFIGS = [
    TrainConfig(epochs=4, batch_size=16, lr=0.05, augment=True, val_size=16, threads=1),
    TrainConfig(epochs=3, batch_size=8, lr=0.01, optimizer="adam", schedule="onecycle",
                val_size=0, threads=1),
]  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=["sgd", "adam"])
@pytest.mark.parametrize("stop_after_steps", [1, 7, 13])
def test_resumed_run_equals_uninterrupted(tmp_path, config, stop_after_steps):
    data = tiny_data()
    reference = tiny_model()
    want = train(reference, data, config, progress=False)

    model = tiny_model()
    with pytest.raises(_Stop):
        train(model, data, config, progress=False, checkpoint_dir=tmp_path,
              callbacks=[_stop_at(stop_after_steps)])  # fmt: skip
    resumed = tiny_model()  # a fresh process would start from scratch
    got = train(resumed, data, config, progress=False, checkpoint_dir=tmp_path)

    assert got.steps == want.steps
    assert [r.train_loss for r in got.history] == [r.train_loss for r in want.history]
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json",
        f"epoch-{config.epochs}.safetensors",
    ]


def test_finished_checkpoint_returns_at_once(tmp_path):
    data, config = tiny_data(), CONFIGS[0]
    first = tiny_model()
    train(first, data, config, progress=False, checkpoint_dir=tmp_path)
    again = tiny_model()
    result = train(again, data, config, progress=False, checkpoint_dir=tmp_path)
    assert result.steps == config.epochs * (80 // 16) and len(result.history) == config.epochs
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    data = tiny_data()
    train(tiny_model(), data, CONFIGS[0], progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"another config .*'lr'"):
        train(tiny_model(), data, CONFIGS[0].replace(lr=0.5), progress=False,
              checkpoint_dir=tmp_path)  # fmt: skip


def test_resume_false_starts_over(tmp_path):
    data, config = tiny_data(), CONFIGS[0].replace(epochs=2)
    train(tiny_model(), data, config, progress=False, checkpoint_dir=tmp_path)
    result = train(tiny_model(), data, config, progress=False, checkpoint_dir=tmp_path,
                   resume=False)  # fmt: skip
    assert len(result.history) == 2 and result.steps == 2 * (80 // 16)


def test_no_pickle_in_checkpoints(tmp_path):
    train(tiny_model(), tiny_data(), CONFIGS[1], progress=False, checkpoint_dir=tmp_path)
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert not data.startswith(b"\x80") and b"PK\x03\x04" not in data[:4]  # pickle, torch zip


def test_leftovers_of_a_killed_run_are_cleaned_on_resume(tmp_path):
    # A kill between writing the new index and removing the previous tensors file, and a kill
    # in the middle of writing a file, each leave one file behind (seen with SIGKILL).
    data, config = tiny_data(), CONFIGS[0]
    train(tiny_model(), data, config, progress=False, checkpoint_dir=tmp_path)
    (tmp_path / "epoch-3.safetensors").write_bytes(b"stale")
    (tmp_path / ".epoch-5.safetensors.x1y2.tmp").write_bytes(b"half")
    train(tiny_model(), data, config, progress=False, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "epoch-4.safetensors"]
