"""Parameter and MAC counts against hand-computed values."""

from __future__ import annotations

import torch
from torch import nn

from modelzip.core.counting import collect_workloads, count_params, layer_rows, module_bytes
from modelzip.models import create


def test_conv_counts():
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
    (w,) = collect_workloads(conv, torch.rand(2, 3, 15, 15))
    # output 8 x 8 x 8; each output needs 3*3*3 MACs
    assert (w.N, w.C, w.K, w.R, w.S, w.P, w.Q) == (2, 3, 8, 3, 3, 8, 8)
    assert w.macs == 2 * 8 * 8 * 8 * 27
    assert w.params == 8 * 27 + 8
    assert w.weight_bytes == 8 * 27 * 4


def test_depthwise_and_group_conv_counts():
    dw = nn.Conv2d(6, 6, 3, groups=6, bias=False)
    (w,) = collect_workloads(dw, torch.rand(1, 6, 10, 10))
    assert (w.C, w.K, w.groups) == (1, 1, 6)
    assert w.macs == 6 * 8 * 8 * 9
    g = nn.Conv2d(8, 4, 1, groups=2)
    (w,) = collect_workloads(g, torch.rand(1, 8, 5, 5))
    assert w.macs == 4 * 25 * 4  # each output channel sees 8/2 inputs


def test_linear_counts_rows_over_leading_dims():
    fc = nn.Linear(20, 7)
    (w,) = collect_workloads(fc, torch.rand(3, 5, 20))
    assert w.N == 15 and w.macs == 15 * 20 * 7 and w.params == 147


def test_lstm_counts():
    lstm = nn.LSTM(10, 20, num_layers=2, batch_first=True)
    ws = collect_workloads(lstm, torch.rand(4, 6, 10))
    assert [w.name for w in ws] == ["l0", "l1"]
    # per step and sample: 4 gates x 20 x (input + hidden)
    assert ws[0].macs == 4 * 6 * 4 * 20 * (10 + 20)
    assert ws[1].macs == 4 * 6 * 4 * 20 * (20 + 20)
    assert ws[0].params == 4 * 20 * (10 + 20) + 2 * 4 * 20
    assert sum(w.params for w in ws) == count_params(lstm)


def test_gru_and_bidirectional_counts():
    gru = nn.GRU(5, 8, bidirectional=True)
    (w,) = collect_workloads(gru, torch.rand(7, 2, 5))  # seq-first
    assert w.time_steps == 7 and w.N == 2 and w.groups == 2
    assert w.macs == 2 * 7 * 2 * 3 * 8 * (5 + 8)


def test_lenet300_and_lenet5_totals():
    m = create("lenet300")
    ws = collect_workloads(m, torch.rand(1, 1, 28, 28))
    assert sum(w.macs for w in ws) == 784 * 300 + 300 * 100 + 100 * 10
    assert count_params(m) == 266_610
    assert module_bytes(m) >= 4 * 266_610
    m5 = create("lenet5")
    ws = collect_workloads(m5, torch.rand(1, 1, 28, 28))
    conv1 = 20 * 24 * 24 * 25
    conv2 = 50 * 8 * 8 * 20 * 25
    assert sum(w.macs for w in ws) == conv1 + conv2 + 800 * 500 + 500 * 10
    rows = layer_rows(ws)
    assert [r.name for r in rows if r.macs] == ["conv1", "conv2", "fc1", "fc2"]


def test_sparsity_is_measured_from_zeros():
    fc = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        fc.weight[:, :4] = 0
    (w,) = collect_workloads(fc, torch.rand(1, 10))
    assert w.weight_sparsity == 0.4 and w.effective_macs == 60


def test_char_lstm_workloads_include_embedding():
    m = create("char_lstm", vocab_size=20, embed_dim=8, hidden_size=16, num_layers=1)
    ws = collect_workloads(m, torch.randint(0, 20, (2, 5)))
    kinds = [w.op for w in ws]
    assert kinds.count("embedding") == 1 and kinds.count("recurrent") == 1
    assert next(w for w in ws if w.op == "embedding").macs == 0


def test_compressed_root_module_is_counted_once():
    from modelzip.prune import MaskedLinear

    layer = MaskedLinear.from_dense(nn.Linear(6, 4))
    ws = collect_workloads(layer, torch.rand(3, 6))
    assert len(ws) == 1 and ws[0].macs == 3 * 6 * 4


def test_compressed_child_inside_a_compressed_layer_describes_itself():
    # materialize() may turn a factor of a compact layer into a kernel layer of its own.
    import modelzip
    from modelzip.prune import MaskedConv2d

    m = create("lenet5").eval()
    x = torch.rand(2, 1, 28, 28)
    recipe = modelzip.Recipe.from_list([{"method": "bottleneck_conv"}])
    small, _ = modelzip.compress(m, recipe, sample=x, measure=False, deploy=False)
    before = sum(w.macs for w in collect_workloads(small, x))
    layer = small.conv2
    name, child = next((n, c) for n, c in layer.named_modules() if isinstance(c, nn.Conv2d))
    layer.set_submodule(name, MaskedConv2d.from_dense(child))
    assert sum(w.macs for w in collect_workloads(small, x)) == before
