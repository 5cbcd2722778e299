"""Element-wise pruning of nn.LSTM / nn.GRU / nn.RNN through their masked form (MaskedRNN)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.selection import Select
from modelzip.models import create
from modelzip.prune import GlobalPruneConfig, MagnitudePruneConfig
from modelzip.prune.magnitude import magnitude_mask
from modelzip.prune.masked_rnn import MaskedRNN
from modelzip.prune.schedule import masked_layers


class Tagger(nn.Module):
    """A bidirectional 2-layer batch-first recurrent layer read by a linear head."""

    def __init__(self, kind: type[nn.RNNBase] = nn.LSTM) -> None:
        super().__init__()
        self.rnn = kind(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _zeroed_dense(layer: MaskedRNN) -> nn.RNNBase:
    """The dense layer with the pruned weights zeroed, built by hand (not with to_dense)."""
    dense = type(layer.rnn)(**{k: v for k, v in layer.spec().items() if k != "kind"})
    with torch.no_grad():
        for n, p in dense.named_parameters():
            own = getattr(layer.rnn, n).detach()
            p.copy_(own * layer.masks()[n] if n in layer.masks() else own)
    return dense


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_masked_rnn_equals_dense_with_zeroed_weights(kind):
    torch.manual_seed(0)
    dense = kind(6, 8, num_layers=2, batch_first=True, bidirectional=True)
    layer = MaskedRNN.from_dense(dense)
    layer.prune_with(magnitude_mask, 0.7)
    x = torch.randn(3, 5, 6)
    out, state = layer(x)
    ref_out, ref_state = _zeroed_dense(layer)(x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for got, want in zip(
        state if isinstance(state, tuple) else (state,),
        ref_state if isinstance(ref_state, tuple) else (ref_state,),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # An initial state is taken as the dense layer takes it.
    h0 = torch.randn(4, 3, 8)
    hx = (h0, torch.randn(4, 3, 8)) if kind is nn.LSTM else h0
    torch.testing.assert_close(layer(x, hx)[0], _zeroed_dense(layer)(x, hx)[0], rtol=0, atol=0)
    torch.testing.assert_close(layer.to_dense()(x)[0], ref_out, rtol=0, atol=0)
    # The masked layer did compute something other than the unpruned one.
    assert not torch.allclose(out, dense(x)[0])


def test_magnitude_prune_reaches_sparsity_per_tensor_and_keeps_biases():
    torch.manual_seed(0)
    model = Tagger()
    biases = {n: p.detach().clone() for n, p in model.rnn.named_parameters() if "bias" in n}
    config = MagnitudePruneConfig(sparsity=0.75, select=Select(types=("LSTM",)))
    small, report = modelzip.compress(model, config, measure=False)
    layer = small.rnn
    assert isinstance(layer, MaskedRNN) and isinstance(small.head, nn.Linear)
    assert len(layer.masks()) == 8  # ih and hh, 2 layers, 2 directions
    for n, mask in layer.masks().items():
        assert int((~mask).sum()) == round(0.75 * mask.numel()), n
        assert bool((getattr(layer.rnn, n)[~mask] == 0).all())
    for n, b in biases.items():
        assert torch.equal(getattr(layer.rnn, n), b)
    assert [c.name for c in report.layers] == ["rnn"]
    assert report.after.params < report.before.params


def test_global_prune_ranks_recurrent_and_linear_weights_together():
    torch.manual_seed(0)
    model = Tagger(nn.GRU)
    with torch.no_grad():
        model.head.weight.mul_(100)  # large weights: one global threshold spares the head
    config = GlobalPruneConfig(sparsity=0.5, select=Select(types=("GRU", "Linear")))
    small, report = modelzip.compress(model, config, measure=False)
    layers = masked_layers(small)
    assert set(layers) == {"rnn", "head"}
    total = sum(m.mask.numel() for m in layers.values())
    pruned = sum(int((~m.mask).sum()) for m in layers.values())
    assert pruned == round(0.5 * total)
    assert layers["head"].sparsity() == 0.0 and layers["rnn"].sparsity() > 0.5
    assert sorted(c.name for c in report.layers) == ["head", "rnn"]


def test_global_prune_with_lstm_types_changes_the_lstm():
    torch.manual_seed(0)
    model = Tagger()
    x = torch.randn(2, 4, 6)
    config = GlobalPruneConfig(sparsity=0.6, select=Select(types=("LSTM",)))
    small, report = modelzip.compress(model, config, measure=False)
    assert isinstance(small.rnn, MaskedRNN)
    assert small.rnn.sparsity() == pytest.approx(0.6, abs=1e-3)
    assert [c.name for c in report.layers] == ["rnn"] and not report.skipped
    assert not torch.allclose(small(x), model(x))


def test_save_load_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = create("char_lstm", vocab_size=20, embed_dim=8, hidden_size=16, num_layers=2)
    config = MagnitudePruneConfig(sparsity=0.8, select=Select(types=("LSTM",)))
    small, _ = modelzip.compress(model, config, measure=False, deploy=False)
    loaded = modelzip.load(modelzip.save(small, tmp_path / "m.mzip"))
    assert isinstance(loaded.lstm, MaskedRNN)
    for (n, a), (m, b) in zip(small.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n
    x = torch.randint(0, 20, (2, 7))
    assert torch.equal(small.eval()(x), loaded.eval()(x))
    # The file keeps kept values and bit masks: smaller than the dense LSTM's float32 weights.
    dense_bytes = sum(p.numel() * 4 for p in model.lstm.parameters())
    assert small.lstm.storage_bytes() < 0.4 * dense_bytes


def test_fine_tuning_keeps_pruned_weights_at_zero():
    torch.manual_seed(0)
    layer = MaskedRNN.from_dense(nn.LSTM(6, 8, num_layers=2, batch_first=True))
    layer.prune_with(magnitude_mask, 0.5)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    before = {n: getattr(layer.rnn, n).detach().clone() for n in layer.masks()}
    out, _ = layer(torch.randn(3, 5, 6))
    out.pow(2).sum().backward()
    opt.step()
    for n, mask in layer.masks().items():
        w = getattr(layer.rnn, n)
        assert bool((w.grad[~mask] == 0).all()), n
        assert bool((w[~mask] == 0).all()), n
        assert not torch.equal(w[mask], before[n][mask]), n  # the kept weights did train


def test_grains_other_than_elements_refuse_recurrent_layers_with_a_reason():
    from modelzip.prune import NMPruneConfig

    config = NMPruneConfig(n=2, m=4, select=Select(types=("LSTM",)))
    small, report = modelzip.compress(Tagger(), config, measure=False)
    assert isinstance(small.rnn, nn.LSTM)
    assert [s.name for s in report.skipped] == ["rnn"]
    assert "element-wise" in report.skipped[0].reason


@pytest.mark.parametrize(
    "config",
    [
        MagnitudePruneConfig(sparsity=0.5, select=Select(types=("LSTM",))),
        GlobalPruneConfig(sparsity=0.5, select=Select(types=("LSTM",))),
        MagnitudePruneConfig(sparsity=0.5, select=Select(names=("encoder\\..*",))),
    ],
)
def test_a_select_matching_no_layer_is_reported(config):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    small, report = modelzip.compress(model, config, measure=False)
    assert not report.layers
    assert all(isinstance(m, (nn.Linear, nn.ReLU)) for m in small)
    [skip] = report.skipped
    assert skip.method == config.method
    assert skip.reason.startswith("select matched no layer")
    assert repr(config.select.types[0] if config.select.types else config.select.names[0]) in (
        skip.reason
    )


def test_a_select_matching_some_layer_reports_nothing_unmatched():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    config = MagnitudePruneConfig(sparsity=0.5, select=Select(names=("2",)))
    _, report = modelzip.compress(model, config, measure=False)
    assert [c.name for c in report.layers] == ["2"] and not report.skipped
