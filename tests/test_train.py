"""Training, evaluation, checkpoints and cached baselines."""

from __future__ import annotations

import json

import pytest
import torch

import modelzip.baselines as baselines
from modelzip.checkpoint import load_checkpoint, load_user_weights, save_checkpoint
from modelzip.core.errors import ConfigError, ModelError
from modelzip.models import create, list_models, model_source
from modelzip.train import (
    TrainConfig,
    count_steps,
    default_train_config,
    evaluate,
    lr_factor,
    random_shift,
    train,
)

TINY = TrainConfig(epochs=2, batch_size=64, lr=0.05, val_size=0, seed=0)


def _digits_model(name: str = "lenet300", seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create(name, input_shape=(1, 8, 8), **kwargs)


def test_training_lifts_accuracy_well_above_chance(mnist):
    data = mnist.subset(train=4000, test=1000)
    torch.manual_seed(0)
    model = create("lenet300")
    before = evaluate(model, data)["accuracy"]
    config = TrainConfig(epochs=4, batch_size=64, lr=0.05, val_size=400, augment=True)
    result = train(model, data, config, progress=False)
    after = evaluate(model, data)["accuracy"]
    assert before < 0.3 and after > 0.85
    assert result.steps == count_steps(data, config) == 4 * (3600 // 64)
    assert len(result.history) == 4 and result.final.val_accuracy > 0.8
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert json.loads(json.dumps(result.to_dict()))["steps"] == result.steps


def test_same_seed_same_weights(digits):
    models = [_digits_model(seed=1) for _ in range(2)]
    for m in models:
        train(m, digits, TINY.replace(seed=5, augment=True), progress=False)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    other = _digits_model(seed=1)
    train(other, digits, TINY.replace(seed=6, augment=True), progress=False)
    assert not torch.equal(other.fc1.weight, models[0].fc1.weight)


def test_conv_net_channels_last_and_callbacks(digits):
    model = _digits_model("resnet_small")
    calls = []
    config = TINY.replace(epochs=1, optimizer="adamw", lr=3e-3, schedule="onecycle")
    train(model, digits, config, progress=False, callbacks=[lambda m, s, e: calls.append((s, e))])
    assert calls == [(s, 0) for s in range(1, count_steps(digits, config) + 1)]
    assert model.conv1.weight.is_contiguous()  # the caller's memory format is handed back
    assert evaluate(model, digits)["accuracy"] > 0.3


def test_a_conv_whose_channels_last_backward_crashes_trains_contiguous(digits):
    # A 1x1 stride-2 conv on 2 channels: torch 2.13's oneDNN corrupts the heap in its
    # channels-last backward (this test process would abort), as in a Tucker-decomposed ResNet.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(2, 16, 1, stride=2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"training contiguous.*'2'"):
        history = train(model, digits, TINY.replace(epochs=1, batch_size=128), progress=False)
    assert history.steps > 0 and all(torch.isfinite(p).all() for p in model.parameters())


def test_progress_bar_runs(digits, capsys):
    train(_digits_model(), digits, TINY.replace(epochs=1, val_size=100), progress=True)
    assert "epoch 1/1" in capsys.readouterr().err


def test_language_model(shakespeare):
    torch.manual_seed(0)
    model = create("char_lstm", embed_dim=8, hidden_size=32, num_layers=1)
    config = TrainConfig(
        epochs=1, batch_size=16, lr=1e-2, optimizer="adam", seq_len=32, steps_per_epoch=30,
        grad_clip=1.0,
    )  # fmt: skip
    result = train(model, shakespeare, config, progress=False, val=shakespeare.val[:4000])
    assert result.steps == 30 and result.final.val_perplexity < 40
    metrics = evaluate(model, shakespeare, shakespeare.test[:4000], seq_len=32)
    assert set(metrics) == {"perplexity", "loss", "accuracy"}
    assert metrics["perplexity"] < shakespeare.vocab_size  # better than uniform guessing


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("lr", -1.0, "(0, inf)"),
        ("epochs", 0, "[1, inf)"),
        ("momentum", 1.0, "[0, 1)"),
        ("label_smoothing", 1.5, "[0, 1)"),
        ("threads", 0, "[1, inf)"),
    ],
)
def test_config_validation_names_field_value_range(field, value, allowed):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert f"TrainConfig.{field}={value!r}" in message and allowed in message


def test_config_choices_and_defaults():
    with pytest.raises(ConfigError, match="rmsprop"):
        TrainConfig(optimizer="rmsprop")
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    assert default_train_config("lenet5").augment
    for name in list_models():  # every zoo model has a config, tuned or generic
        assert isinstance(default_train_config(name), TrainConfig)
    with pytest.raises(KeyError, match="unknown model"):
        default_train_config("alexnet")


def test_schedules():
    assert lr_factor("cosine", 0, 100) == 1.0 and lr_factor("cosine", 100, 100) < 1e-9
    assert lr_factor("step", 60, 100) == pytest.approx(0.1)
    assert lr_factor("step", 80, 100) == pytest.approx(0.01)
    assert lr_factor("onecycle", 0, 100) == pytest.approx(1 / 25)
    assert lr_factor("onecycle", 30, 100) == pytest.approx(1.0)
    assert lr_factor("constant", 99, 100) == 1.0


def test_random_shift():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))
    assert len({tuple(o.nonzero()[0].tolist()) for o in out}) > 5  # images moved differently
    assert torch.equal(random_shift(x, 0), x)


def test_evaluate_restores_mode(digits):
    model = _digits_model("vgg_small")
    model.train()
    evaluate(model, digits)
    assert model.training
    model.eval()
    evaluate(model, digits, "train", batch_size=500)
    assert not model.training


def test_nan_weights_refused(digits):
    model = _digits_model()
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"'fc2\.weight'.*NaN"):
        train(model, digits, TINY, progress=False)
    with pytest.raises(ModelError, match=r"'fc2\.weight'"):
        evaluate(model, digits)


def test_checkpoint_round_trip_bit_identical(tmp_path, digits):
    model = _digits_model("resnet_small", num_classes=10)
    train(model, digits, TINY.replace(epochs=1), progress=False)
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, {"accuracy": 0.5, "train_config": TINY})
    loaded, meta = load_checkpoint(path)
    assert meta["accuracy"] == 0.5 and meta["train_config"]["epochs"] == 2
    assert meta["source"] == model_source(model) and meta["torch_version"] == torch.__version__
    x = digits.x_test[:50]
    assert torch.equal(loaded(x), model.eval()(x))


def test_load_user_weights_pt(tmp_path):
    model = _digits_model()
    for i, obj in enumerate([model.state_dict(), {"state_dict": model.state_dict()}]):
        path = tmp_path / f"w{i}.pt"
        torch.save(obj, path)
        fresh = load_user_weights(_digits_model(seed=9), path)
        assert torch.equal(fresh.fc3.bias, model.fc3.bias)
    torch.save(
        create("lenet300", input_shape=(1, 8, 8), num_classes=3).state_dict(), tmp_path / "b.pt"
    )
    with pytest.raises(ModelError, match=r"'fc3\.weight' has shape \(3, 100\)"):
        load_user_weights(_digits_model(), tmp_path / "b.pt")
    torch.save(create("lenet5").state_dict(), tmp_path / "c.pth")
    with pytest.raises(ModelError, match=r"missing 'fc3\.weight'.*unexpected"):
        load_user_weights(_digits_model(), tmp_path / "c.pth")
    with pytest.raises(ModelError, match="no such weights file"):
        load_user_weights(_digits_model(), tmp_path / "absent.pt")


def test_pretrained_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELZIP_CACHE", str(tmp_path))
    first = baselines.pretrained("lenet300", "digits", TINY, progress=False)
    info = baselines.pretrained_info("lenet300", "digits", TINY, train_if_missing=False)
    assert info is not None and info["test"]["accuracy"] > 0.5 and info["seconds"] > 0
    assert info["source"]["kwargs"] == {"input_shape": [1, 8, 8]}
    files = sorted(p.name for p in (tmp_path / "baselines").iterdir())
    assert len(files) == 2 and files[0].startswith("lenet300-digits-")

    def no_training(*args, **kwargs):
        raise AssertionError("a cached baseline was trained again")

    monkeypatch.setattr(baselines, "train", no_training)
    second = baselines.pretrained("lenet300", "digits", TINY, progress=False)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(first(x), second(x))
    other = TINY.replace(seed=1)
    assert baselines.pretrained_info("lenet300", "digits", other, train_if_missing=False) is None
