"""Channel pruning with real removal: coupled layers traced with torch.fx."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.counting import count_params
from modelzip.core.errors import ModelError
from modelzip.models import create
from modelzip.prune.channels import (
    ChannelPruneConfig,
    mask_channels,
    plan_channels,
    remove_channels,
)
from modelzip.prune.criteria import bn_sparsity
from modelzip.prune.dependency import channel_graph


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that a wrongly sliced BN shows in the outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


class Branches(nn.Module):
    """Concatenation, a depthwise conv and a flatten into a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.pw = nn.Conv2d(10, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        y = nn.functional.max_pool2d(self.pw(self.dw(y)), 2)
        return self.fc(torch.flatten(y, 1))


def _check_removal_equals_masking(model: nn.Module, x: torch.Tensor, sparsity: float = 0.5):
    graph, keep = plan_channels(model, ChannelPruneConfig(sparsity=sparsity, round_to=1), x)
    assert keep, "nothing prunable found"
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    mask_channels(masked, graph, keep)
    remove_channels(removed, graph, keep)
    with torch.no_grad():
        torch.testing.assert_close(removed(x), masked(x), rtol=1e-5, atol=1e-5)
    assert count_params(removed) < count_params(model)
    return graph, removed


def test_resnet_removal_equals_masked_model_and_add_groups_prune_together():
    torch.manual_seed(0)
    model = _randomize_bn(create("resnet_small", width=8))
    x = torch.rand(3, 1, 28, 28)
    graph, removed = _check_removal_equals_masking(model, x)
    # The stem and both convs feeding stage 1's residual add form one group.
    groups = [sorted(p) for p in graph.producers.values()]
    assert ["conv1", "layer1.0.conv2"] in groups
    assert ["layer2.0.conv2", "layer2.0.shortcut.0"] in groups
    assert removed.conv1.out_channels == removed.layer1[0].conv2.out_channels == 4
    assert removed.layer2[0].shortcut[0].in_channels == 4
    assert removed.fc.in_features == 16


def test_concat_depthwise_and_flatten_are_followed():
    torch.manual_seed(0)
    model = _randomize_bn(Branches())
    x = torch.rand(2, 1, 8, 8)
    _, removed = _check_removal_equals_masking(model, x)
    assert removed.a.out_channels + removed.b.out_channels == removed.bn.num_features
    assert removed.dw.groups == removed.dw.out_channels == removed.bn.num_features
    assert removed.fc.in_features == removed.pw.out_channels * 16


def test_outputs_of_the_model_are_never_pruned():
    model = create("lenet300").eval()
    graph = channel_graph(model, torch.rand(2, 1, 28, 28))
    assert sorted(n for p in graph.producers.values() for n in p) == ["fc1", "fc2"]


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow
            return y
        return -y


def test_untraceable_model_names_the_operation():
    with pytest.raises(ModelError, match=r"if y\.sum\(\) > 0"):
        modelzip.compress(
            Untraceable(), ChannelPruneConfig(), sample=torch.rand(1, 1, 8, 8), measure=False
        )


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "taylor", "random"])
def test_criteria_prune_resnet_and_save_load(criterion, digits, tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn(create("resnet_small", input_shape=(1, 8, 8), width=4))
    config = ChannelPruneConfig(sparsity=0.5, criterion=criterion, taylor_batches=1, round_to=1)
    small, report = modelzip.compress(model, config, digits, evaluate=False, measure=False)
    assert report.after.params < report.before.params
    assert report.after.macs < 0.5 * report.before.macs
    loaded = modelzip.load(modelzip.save(small, tmp_path / "m.mzip"))
    x = digits.x_test[:4]
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_bn_sparsity_adds_the_l1_subgradient_while_active():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.5, 1.0, -2.0]))
    x = torch.rand(2, 1, 5, 5)
    model(x).pow(2).sum().backward()
    plain = model[1].weight.grad.clone()
    model[1].weight.grad = None
    with bn_sparsity(model, penalty=0.1):
        model(x).pow(2).sum().backward()
    penalized = model[1].weight.grad.clone()
    torch.testing.assert_close(penalized - plain, 0.1 * torch.sign(model[1].weight.detach()))
    model[1].weight.grad = None
    model(x).pow(2).sum().backward()  # the hook is gone after the block
    torch.testing.assert_close(model[1].weight.grad, plain)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_hidden_unit_removal_equals_zeroed_units(kind, tmp_path):
    from modelzip.prune.rnn import HiddenPruneConfig, hidden_scores, remove_hidden_units

    torch.manual_seed(0)
    model = create("char_lstm", vocab_size=20, embed_dim=8, hidden_size=16, num_layers=2).eval()
    if kind == "GRU":
        model.lstm = nn.GRU(8, 16, 2, batch_first=True)
    x = torch.randint(0, 20, (2, 12))
    keep = [torch.sort(s.topk(10).indices).values for s in hidden_scores(model.lstm, model.fc)]
    masked = copy.deepcopy(model)
    gates = 4 if kind == "LSTM" else 3
    with torch.no_grad():
        for layer in range(2):
            drop = torch.ones(16, dtype=torch.bool)
            drop[keep[layer]] = False
            rows = (torch.arange(gates)[:, None] * 16 + drop.nonzero().flatten()).flatten()
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(masked.lstm, f"{n}_l{layer}")[rows] = 0
    removed = copy.deepcopy(model)
    removed.lstm, removed.fc = remove_hidden_units(model.lstm, keep, model.fc)
    with torch.no_grad():
        torch.testing.assert_close(removed(x), masked(x), rtol=1e-5, atol=1e-5)
    small, report = modelzip.compress(
        model, HiddenPruneConfig(sparsity=0.5), sample=x, measure=False
    )
    assert small.lstm.rnn.hidden_size == 8 and small.fc.in_features == 8
    assert report.after.params < report.before.params


def test_round_to_keeps_widths_that_are_multiples() -> None:
    model = create("resnet_small")
    x = torch.randn(2, 1, 28, 28)
    exact, _ = modelzip.compress(
        model, ChannelPruneConfig(sparsity=0.3, round_to=1), sample=x, measure=False
    )
    rounded, _ = modelzip.compress(model, ChannelPruneConfig(sparsity=0.3), sample=x, measure=False)

    def widths(m: nn.Module) -> list[int]:
        return [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]

    assert set(widths(exact)) == {11, 22, 45}  # 16, 32, 64 less round(0.3 C)
    assert set(widths(rounded)) == {8, 24, 48}  # by default the nearest multiples of 8, never 0
    tiny = ChannelPruneConfig(sparsity=0.9, round_to=8)  # 16 -> 2 rounds up to 8, not down to 0
    assert min(widths(modelzip.compress(model, tiny, sample=x, measure=False)[0])) == 8
    with pytest.raises(ValueError, match="round_to"):
        ChannelPruneConfig(round_to=0)


@pytest.mark.parametrize("capability", ["AVX512", "AVX2"])
def test_report_says_which_kept_widths_avx512_convs_pad(monkeypatch, capability) -> None:
    """On an AVX-512 CPU the Report names the kept conv widths oneDNN pads to a multiple of 16
    (the VGG's 24 and 40 ran as 32 and 48); elsewhere, or with round_to=16, it says nothing."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    model = create("vgg_small")
    x = torch.randn(2, 1, 28, 28)
    _, report = modelzip.compress(model, ChannelPruneConfig(sparsity=0.35), sample=x, measure=False)
    notes = {c.name: c.note for c in report.layers}
    assert notes["conv2"].startswith("32->24")
    padded = {n for n, note in notes.items() if "AVX-512" in note}
    if capability == "AVX512":
        assert padded == {"conv1", "conv2", "conv3", "conv4"}  # 24, 24, 40, 40; conv5 keeps 80
        assert "compute 40 channels as 48" in notes["conv3"] and "round_to=16" in notes["conv3"]
    else:
        assert padded == set()
    config = ChannelPruneConfig(sparsity=0.3, round_to=16)
    _, report = modelzip.compress(model, config, sample=x, measure=False)
    assert not any("AVX-512" in c.note for c in report.layers)
