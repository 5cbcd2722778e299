"""Each RNN unit against a step-by-step reference of its paper's equations; the runner, LSTMP,
F-LSTM, G-LSTM and Skip RNN against theirs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import sigmoid, tanh

from modelzip.compact import (
    CELLS,
    FLSTMCell,
    GLSTMCell,
    GRUCell,
    JANETCell,
    LSTMCell,
    LSTMPCell,
    MGUCell,
    PhasedLSTMCell,
    SkipRNN,
    SLSTMCell,
    StackedRNN,
    make_cell,
    run_cell,
)

M, N, B, T = 5, 6, 3, 7


def params(cell) -> int:
    return sum(p.numel() for p in cell.parameters())


def seq(*shape):
    torch.manual_seed(1)
    return torch.randn(*shape)


def run_reference(step, x, state):
    outs = []
    for t in range(x.shape[0]):
        h, state = step(x[t], state)
        outs.append(h)
    return torch.stack(outs)


def check(cell, reference, state):
    x = seq(T, B, M)
    got, _ = run_cell(cell, x)
    torch.testing.assert_close(got, run_reference(reference, x, state), rtol=1e-5, atol=1e-6)


def test_lstm_equations():
    torch.manual_seed(0)
    cell = LSTMCell(M, N)
    W, b, U = cell.ih.weight, cell.ih.bias, cell.hh.weight

    def ref(x, s):
        h, c = s
        i, f, g, o = (W @ x.T + U @ h.T + b[:, None]).T.chunk(4, -1)
        c = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h = sigmoid(o) * tanh(c)
        return h, (h, c)

    check(cell, ref, (torch.zeros(B, N), torch.zeros(B, N)))
    assert params(cell) == 4 * (M * N + N * N + N)


def test_lstm_matches_torch_lstm():
    torch.manual_seed(0)
    cell, ref = LSTMCell(M, N), torch.nn.LSTM(M, N)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(cell.ih.weight)
        ref.bias_ih_l0.copy_(cell.ih.bias)
        ref.weight_hh_l0.copy_(cell.hh.weight)
        ref.bias_hh_l0.zero_()
    x = seq(T, B, M)
    torch.testing.assert_close(run_cell(cell, x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


def test_gru_equations():
    torch.manual_seed(0)
    cell = GRUCell(M, N)
    Wz, Wr, Wh = cell.ih.weight.chunk(3)
    bz, br, bh = cell.ih.bias.chunk(3)
    Uz, Ur = cell.hh_gates.weight.chunk(2)
    Uh = cell.hh_cand.weight

    def ref(x, s):
        (h,) = s
        z = sigmoid(x @ Wz.T + h @ Uz.T + bz)
        r = sigmoid(x @ Wr.T + h @ Ur.T + br)
        cand = tanh(x @ Wh.T + (r * h) @ Uh.T + bh)
        h = (1 - z) * h + z * cand
        return h, (h,)

    check(cell, ref, (torch.zeros(B, N),))
    assert params(cell) == 3 * (M * N + N * N + N)


def test_mgu_equations_and_a_third_fewer_params_than_gru():
    torch.manual_seed(0)
    cell = MGUCell(M, N)
    Wf, Wh = cell.ih.weight.chunk(2)
    bf, bh = cell.ih.bias.chunk(2)
    Uf, Uh = cell.hh_gate.weight, cell.hh_cand.weight

    def ref(x, s):
        (h,) = s
        f = sigmoid(Wf @ x.T + Uf @ h.T + bf[:, None]).T
        cand = tanh(Wh @ x.T + Uh @ (f * h).T + bh[:, None]).T
        h = (1 - f) * h + f * cand
        return h, (h,)

    check(cell, ref, (torch.zeros(B, N),))
    assert params(cell) == 2 * (M * N + N * N + N)
    assert 3 * params(cell) == 2 * params(GRUCell(M, N))


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_slstm_equations(variant):
    torch.manual_seed(0)
    cell = SLSTMCell(M, N, variant=variant)
    with torch.no_grad():
        if cell.gate_bias is not None:
            cell.gate_bias.normal_()
    Wg, bg, Ug = cell.ih.weight, cell.ih.bias, cell.hh_cand.weight
    U = cell.hh_gates.weight if variant in (1, 2) else torch.zeros(3 * N, N)
    bias = cell.gate_bias if variant in (1, 3) else torch.zeros(3 * N)

    def ref(x, s):
        h, c = s
        i, f, o = sigmoid(h @ U.T + bias).chunk(3, -1)
        c = f * c + i * tanh(x @ Wg.T + h @ Ug.T + bg)
        h = o * tanh(c)
        return h, (h, c)

    check(cell, ref, (torch.zeros(B, N), torch.zeros(B, N)))
    gates = {1: 3 * (N * N + N), 2: 3 * N * N, 3: 3 * N}[variant]
    assert params(cell) == M * N + N * N + N + gates


def test_janet_equations_and_chrono_init():
    torch.manual_seed(0)
    cell = JANETCell(M, N, chrono_tmax=20)
    bf, bc = cell.ih.bias.detach().chunk(2)
    assert torch.all(bc == 0)
    assert torch.all(bf >= 0) and torch.all(bf <= torch.log(torch.tensor(19.0)))
    Wf, Wc = cell.ih.weight.chunk(2)
    Uf, Uc = cell.hh.weight.chunk(2)
    beta = 1.0

    def ref(x, s):
        (c,) = s
        s_ = x @ Wf.T + c @ Uf.T + bf
        cand = tanh(x @ Wc.T + c @ Uc.T + bc)
        c = sigmoid(s_) * c + (1 - sigmoid(s_ - beta)) * cand
        return c, (c,)

    check(cell, ref, (torch.zeros(B, N),))
    assert params(cell) == 2 * (M * N + N * N + N)


def test_phased_lstm_time_gate_and_equations():
    torch.manual_seed(0)
    cell = PhasedLSTMCell(M, N, r_on=0.2, leak=1e-3)
    with torch.no_grad():
        cell.log_tau.fill_(torch.log(torch.tensor(10.0)))
        cell.shift.zero_()
    k = cell.time_gate(torch.tensor([[0.5], [1.5], [5.0]]))  # phases 0.05, 0.15, 0.5
    torch.testing.assert_close(k[:, 0], torch.tensor([0.5, 0.5, 0.0005]))
    lstm = LSTMCell(M, N)
    lstm.load_state_dict(
        {k_: v for k_, v in cell.state_dict().items() if k_.startswith(("ih", "hh"))}
    )

    def ref(x, s):
        h, c, t = s
        h_new, (_, c_new) = lstm(x, (h, c))
        tau, r = 10.0, 0.2
        phi = torch.remainder(t, tau) / tau
        gate = torch.where(
            phi < r / 2, 2 * phi / r, torch.where(phi < r, 2 - 2 * phi / r, 1e-3 * phi)
        )
        c = gate * c_new + (1 - gate) * c
        h = gate * h_new + (1 - gate) * h
        return h, (h, c, t + 1)

    check(cell, ref, (torch.zeros(B, N), torch.zeros(B, N), torch.zeros(B, 1)))


def test_lstmp_projection_size_respected():
    torch.manual_seed(0)
    p = 3
    cell = LSTMPCell(M, N, proj_size=p)
    out, (r, c) = run_cell(cell, seq(T, B, M))
    assert out.shape == (T, B, p) and r.shape == (B, p) and c.shape == (B, N)
    assert cell.hh.weight.shape == (4 * N, p)
    assert params(cell) == 4 * N * (M + p + 1) + N * p
    W, b, U, Wr = cell.ih.weight, cell.ih.bias, cell.hh.weight, cell.proj.weight

    def ref(x, s):
        r, c = s
        i, f, g, o = (x @ W.T + r @ U.T + b).chunk(4, -1)
        c = sigmoid(f) * c + sigmoid(i) * tanh(g)
        r = (sigmoid(o) * tanh(c)) @ Wr.T
        return r, (r, c)

    check(cell, ref, (torch.zeros(B, p), torch.zeros(B, N)))


def test_flstm_is_a_factorized_lstm():
    torch.manual_seed(0)
    r = 4
    cell = FLSTMCell(M, N, rank=r)
    assert params(cell) == r * (M + N) + 4 * N * r + 4 * N
    lstm = LSTMCell(M, N)
    with torch.no_grad():  # the equivalent dense LSTM: W = W2 W1x, U = W2 W1h
        lstm.ih.weight.copy_(cell.w2.weight @ cell.ih.weight)
        lstm.ih.bias.copy_(cell.w2.bias)
        lstm.hh.weight.copy_(cell.w2.weight @ cell.hh.weight)
    x = seq(T, B, M)
    torch.testing.assert_close(run_cell(cell, x)[0], run_cell(lstm, x)[0], rtol=1e-5, atol=1e-6)


def test_glstm_is_independent_group_lstms():
    torch.manual_seed(0)
    g, m, n = 2, 6, 8
    cell = GLSTMCell(m, n, groups=g)
    assert params(cell) == 4 * n * (m + n) // g + 4 * n
    x = seq(T, B, m)
    got = run_cell(cell, x)[0]
    parts = []
    for j in range(g):
        lstm = LSTMCell(m // g, n // g)
        with torch.no_grad():
            lstm.ih.weight.copy_(cell.ih.weight[j].T)
            lstm.ih.bias.copy_(cell.ih.bias.view(g, -1)[j])
            lstm.hh.weight.copy_(cell.hh.weight[j].T)
        parts.append(run_cell(lstm, x[..., j * m // g : (j + 1) * m // g])[0])
    torch.testing.assert_close(got, torch.cat(parts, -1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_one_interface(name):
    kwargs = {"lstmp": {"proj_size": 3}, "flstm": {"rank": 2}, "glstm": {"groups": 2}}
    cell = make_cell(name, 4, 6, **kwargs.get(name, {}))
    x = torch.randn(B, 4)
    h, state = cell(x, cell.init_state(B))
    assert h.shape == (B, cell.output_size)
    h2, _ = cell(x, state)
    assert h2.shape == h.shape and torch.isfinite(h2).all()
    assert StackedRNN(name, 4, 6, 2, residual=True, **kwargs.get(name, {}))(seq(B, T, 4)).shape[
        :2
    ] == (B, T)


@pytest.mark.parametrize("name", ["lstm", "gru", "mgu"])
def test_skip_rnn_forced_open_is_the_plain_rnn(name):
    torch.manual_seed(0)
    cell = make_cell(name, M, N)
    skip = SkipRNN(cell, force_open=True)
    x = seq(B, T, M)
    got, _ = skip(x)
    want, _ = run_cell(cell, x.transpose(0, 1))
    torch.testing.assert_close(got, want.transpose(0, 1))
    assert skip.budget_loss(0.5).item() == pytest.approx(0.5 * T)


def test_skip_rnn_learned_gate_skips_and_holds_state():
    torch.manual_seed(0)
    skip = SkipRNN(make_cell("gru", M, N))
    with torch.no_grad():
        skip.update.weight.zero_()
        skip.update.bias.fill_(math.log(0.3 / 0.7))  # Δũ = 0.3: ũ = 1, .3, .6, .3, .6 ...
    x = seq(B, T, M)
    out, _ = skip(x)
    assert skip.updates[0].tolist() == [1, 0, 1, 0, 1, 0, 1]
    held = skip.updates[0] == 0
    for t in torch.nonzero(held).flatten().tolist():
        torch.testing.assert_close(out[:, t], out[:, t - 1])
    loss = skip.budget_loss(1.0)
    loss.backward()
    assert skip.update.bias.grad is not None  # the straight-through estimator passes gradients


def test_bad_cell_arguments():
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMCell(3, 0)
    with pytest.raises(ValueError, match="variant"):
        SLSTMCell(3, 4, variant=4)
    with pytest.raises(ValueError, match="unknown cell"):
        make_cell("transformer", 3, 4)
    with pytest.raises(ValueError, match="groups"):
        GLSTMCell(3, 4, groups=2)
