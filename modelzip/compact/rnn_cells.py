"""Compact recurrent units (the survey's Fig. 7), all with one interface.

``cell(x, state) -> (h, state)`` runs one time step: ``x`` is ``N x input_size``, ``state`` a
tuple of tensors (``cell.init_state(n)`` to start) and ``h`` the ``N x output_size`` output.
For speed a runner calls ``cell.input_projection`` on the whole sequence at once (the ``W x``
terms have no recurrence) and then ``cell.step(gx[t], state)`` per step;
``cell(x, state) == cell.step(cell.input_projection(x), state)``.

Equations (``σ`` the logistic function, ``⊙`` the elementwise product):

* LSTM (Hochreiter & Schmidhuber 1997): ``[i, f, g, o] = W x + U h + b``,
  ``c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)``, ``h' = σ(o) ⊙ tanh(c')``.
* GRU (Cho et al. 2014): ``z = σ(W_z x + U_z h + b_z)``, ``r = σ(W_r x + U_r h + b_r)``,
  ``h~ = tanh(W_h x + U_h (r ⊙ h) + b_h)``, ``h' = (1 - z) ⊙ h + z ⊙ h~``.
* MGU (Zhou et al. 2016): ``f = σ(W_f x + U_f h + b_f)``, ``h~ = tanh(W_h x + U_h (f ⊙ h) + b_h)``,
  ``h' = (1 - f) ⊙ h + f ⊙ h~``.
* S-LSTM (Lu & Salem 2017, "slim" LSTMs): the LSTM with gates ``i, f, o`` computed from less:
  variant 1 ``σ(U h + b)``, variant 2 ``σ(U h)``, variant 3 ``σ(b)``; the cell input
  ``g = W_g x + U_g h + b_g`` is kept.
* JANET (van der Westhuizen & Lasenby 2018): ``s = W_f x + U_f h + b_f``,
  ``c~ = tanh(W_c x + U_c h + b_c)``, ``c' = σ(s) ⊙ c + (1 - σ(s - β)) ⊙ c~``, ``h' = c'``,
  with the chrono initialisation ``b_f = log(U(1, T_max - 1))`` (Tallec & Ollivier 2018).
* Phased LSTM (Neil et al. 2016): an LSTM step ``(c~, h~)`` gated by a periodic time gate
  ``k``: ``φ = ((t - s) mod τ) / τ``; ``k = 2φ/r_on`` if ``φ < r_on/2``, ``2 - 2φ/r_on`` if
  ``φ < r_on``, else ``α φ``; ``c' = k ⊙ c~ + (1 - k) ⊙ c``, ``h' = k ⊙ h~ + (1 - k) ⊙ h``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from modelzip.core.limits import check_positive_ints

__all__ = [
    "BASIC_CELLS",
    "GRUCell",
    "JANETCell",
    "LSTMCell",
    "MGUCell",
    "PhasedLSTMCell",
    "RNNCell",
    "RecurrentCell",
    "SLSTMCell",
]

State = tuple[Tensor, ...]


class RecurrentCell(nn.Module):
    """Base of the cells: one time step ``(x, state) -> (h, state)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        check_positive_ints(input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size

    @property
    def output_size(self) -> int:
        """Width of ``h`` (the hidden size unless the cell projects it)."""
        return self.hidden_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Widths of the state tensors; the first is the output ``h``."""
        return (self.output_size,)

    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zero state for ``batch`` sequences."""
        p = next(self.parameters())
        return tuple(
            torch.zeros(batch, s, device=device or p.device, dtype=dtype or p.dtype)
            for s in self.state_sizes
        )

    def input_projection(self, x: Tensor) -> Tensor:
        """The ``W x + b`` terms of every step (``... x input_size``), computed in one go."""
        return self.ih(x)

    def step(self, gx: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        return self.step(self.input_projection(x), state)


class RNNCell(RecurrentCell):
    """Elman RNN: ``h' = tanh(W x + U h + b)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.ih = nn.Linear(input_size, hidden_size)
        self.hh = nn.Linear(hidden_size, hidden_size, bias=False)

    def step(self, gx: Tensor, state: State) -> tuple[Tensor, State]:
        h = torch.tanh(gx + self.hh(state[0]))
        return h, (h,)


class LSTMCell(RecurrentCell):
    """LSTM (module docstring); the gates are laid out ``[i, f, g, o]`` per group.

    Subclasses in :mod:`~modelzip.compact.rnn_networks` change how the pre-activations are made
    (:meth:`preactivations`) or what is fed back (:meth:`output`): LSTMP, F-LSTM, G-LSTM.
    """

    groups: int = 1

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0) -> None:
        super().__init__(input_size, hidden_size)
        self.ih, self.hh = self._maps(input_size, hidden_size)
        self._init_forget_bias(forget_bias)

    def _maps(self, input_size: int, hidden_size: int) -> tuple[nn.Module, nn.Module]:
        return (
            nn.Linear(input_size, 4 * hidden_size),
            nn.Linear(self.recurrent_size, 4 * hidden_size, bias=False),
        )

    def _init_forget_bias(self, value: float) -> None:
        # A positive forget bias keeps the memory at the start of training (Jozefowicz 2015).
        bias = getattr(self.ih, "bias", None)
        if bias is not None and bias.numel() == 4 * self.hidden_size:
            with torch.no_grad():
                bias.view(self.groups, 4, -1)[:, 1] = value

    @property
    def recurrent_size(self) -> int:
        """Width of what is fed back (``h``, or the projection ``r`` of LSTMP)."""
        return self.hidden_size

    @property
    def output_size(self) -> int:
        return self.recurrent_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.recurrent_size, self.hidden_size)

    def preactivations(self, gx: Tensor, h: Tensor) -> Tensor:
        """``W x + U h + b`` of the four gates (``N x 4H``)."""
        return gx + self.hh(h)

    def output(self, h: Tensor) -> Tensor:
        return h

    def step(self, gx: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        z = self.preactivations(gx, h).reshape(h.shape[0], self.groups, 4, -1)
        i, f, g, o = (z[:, :, j].reshape(h.shape[0], -1) for j in range(4))
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        out = self.output(torch.sigmoid(o) * torch.tanh(c))
        return out, (out, c)


class GRUCell(RecurrentCell):
    """GRU of Cho et al. (2014), with the reset gate applied before ``U_h`` (module docstring)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.ih = nn.Linear(input_size, 3 * hidden_size)  # [z, r, h~]
        self.hh_gates = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.hh_cand = nn.Linear(hidden_size, hidden_size, bias=False)

    def step(self, gx: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        gz, gr, gh = gx.chunk(3, dim=-1)
        uz, ur = self.hh_gates(h).chunk(2, dim=-1)
        z, r = torch.sigmoid(gz + uz), torch.sigmoid(gr + ur)
        cand = torch.tanh(gh + self.hh_cand(r * h))
        h = (1 - z) * h + z * cand
        return h, (h,)


class MGUCell(RecurrentCell):
    """Minimal gated unit (Zhou et al. 2016): one forget gate, ``2 (m n + n^2 + n)`` parameters
    against the GRU's ``3 (m n + n^2 + n)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.ih = nn.Linear(input_size, 2 * hidden_size)  # [f, h~]
        self.hh_gate = nn.Linear(hidden_size, hidden_size, bias=False)
        self.hh_cand = nn.Linear(hidden_size, hidden_size, bias=False)

    def step(self, gx: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        gf, gh = gx.chunk(2, dim=-1)
        f = torch.sigmoid(gf + self.hh_gate(h))
        cand = torch.tanh(gh + self.hh_cand(f * h))
        h = (1 - f) * h + f * cand
        return h, (h,)


class SLSTMCell(RecurrentCell):
    """Slim LSTM (Lu & Salem 2017): gates ``i, f, o`` without the input (``variant`` 1: ``U h + b``,
    2: ``U h``, 3: ``b`` only); the cell input ``g = tanh(W_g x + U_g h + b_g)`` is kept."""

    def __init__(self, input_size: int, hidden_size: int, variant: int = 1) -> None:
        super().__init__(input_size, hidden_size)
        if variant not in (1, 2, 3):
            raise ValueError(f"variant must be 1, 2 or 3, got {variant!r}")
        self.variant = variant
        self.ih = nn.Linear(input_size, hidden_size)
        self.hh_cand = nn.Linear(hidden_size, hidden_size, bias=False)
        self.hh_gates = (
            nn.Linear(hidden_size, 3 * hidden_size, bias=False) if variant in (1, 2) else None
        )
        self.gate_bias = nn.Parameter(torch.zeros(3 * hidden_size)) if variant in (1, 3) else None
        if self.gate_bias is not None:
            with torch.no_grad():
                self.gate_bias[hidden_size : 2 * hidden_size] = 1.0  # forget bias

    def step(self, gx: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        z = h.new_zeros(h.shape[0], 3 * self.hidden_size)
        if self.hh_gates is not None:
            z = z + self.hh_gates(h)
        if self.gate_bias is not None:
            z = z + self.gate_bias
        i, f, o = torch.sigmoid(z).chunk(3, dim=-1)
        c = f * c + i * torch.tanh(gx + self.hh_cand(h))
        h = o * torch.tanh(c)
        return h, (h, c)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size, self.hidden_size)


class JANETCell(RecurrentCell):
    """JANET, "just another network" (van der Westhuizen & Lasenby 2018): forget gate only.

    ``beta`` shifts the input gate ``1 - σ(s - β)`` so that a little input is always let in;
    ``chrono_tmax`` is ``T_max`` of the chrono initialisation (the longest dependency expected).
    """

    def __init__(
        self, input_size: int, hidden_size: int, beta: float = 1.0, chrono_tmax: int = 28
    ) -> None:
        super().__init__(input_size, hidden_size)
        if not isinstance(chrono_tmax, int) or chrono_tmax < 3:
            raise ValueError(f"chrono_tmax must be an int >= 3, got {chrono_tmax!r}")
        self.beta, self.chrono_tmax = float(beta), chrono_tmax
        self.ih = nn.Linear(input_size, 2 * hidden_size)  # [s, c~]
        self.hh = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.chrono_init()

    def chrono_init(self, generator: torch.Generator | None = None) -> None:
        """``b_f = log(U(1, T_max - 1))``, ``b_c = 0`` (Tallec & Ollivier, ICLR 2018)."""
        n = self.hidden_size
        u = torch.rand(n, generator=generator) * (self.chrono_tmax - 2) + 1
        with torch.no_grad():
            self.ih.bias[:n] = torch.log(u).to(self.ih.bias)
            self.ih.bias[n:] = 0.0

    def step(self, gx: Tensor, state: State) -> tuple[Tensor, State]:
        (c,) = state
        gs, gc = (gx + self.hh(c)).chunk(2, dim=-1)
        c = torch.sigmoid(gs) * c + (1 - torch.sigmoid(gs - self.beta)) * torch.tanh(gc)
        return c, (c,)


class PhasedLSTMCell(LSTMCell):
    """Phased LSTM (Neil et al., NeurIPS 2016) on unit time steps (``t = 0, 1, 2 ...``).

    Each unit has a learned period ``τ`` (log-uniform in ``period_range`` at first), phase shift
    ``s`` (uniform in ``[0, τ)``) and open ratio ``r_on``; ``leak`` is ``α``. The peepholes of
    the paper are left out. The state carries the time ``t`` as a third tensor (``N x 1``).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        r_on: float = 0.05,
        leak: float = 1e-3,
        period_range: tuple[float, float] = (1.0, 50.0),
    ) -> None:
        super().__init__(input_size, hidden_size)
        lo, hi = period_range
        if not 0 < lo <= hi:
            raise ValueError(f"period_range must satisfy 0 < low <= high, got {period_range!r}")
        if not 0 < r_on <= 1:
            raise ValueError(f"r_on must be in (0, 1], got {r_on!r}")
        log_tau = torch.empty(hidden_size).uniform_(math.log(lo), math.log(hi))
        self.log_tau = nn.Parameter(log_tau)
        self.shift = nn.Parameter(torch.rand(hidden_size) * log_tau.exp())
        self.r_on = nn.Parameter(torch.full((hidden_size,), float(r_on)))
        self.leak = float(leak)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size, self.hidden_size, 1)

    def time_gate(self, t: Tensor) -> Tensor:
        """``k`` (``N x H``) at times ``t`` (``N x 1``)."""
        tau = self.log_tau.exp()
        phi = torch.remainder(t - self.shift, tau) / tau
        r = self.r_on
        up, down = 2 * phi / r, 2 - 2 * phi / r
        return torch.where(phi < r / 2, up, torch.where(phi < r, down, self.leak * phi))

    def step(self, gx: Tensor, state: State) -> tuple[Tensor, State]:
        h, c, t = state
        h_new, (_, c_new) = super().step(gx, (h, c))
        k = self.time_gate(t)
        c = k * c_new + (1 - k) * c
        h = k * h_new + (1 - k) * h
        return h, (h, c, t + 1)


#: The cells of this module by name; :data:`modelzip.compact.rnn_networks.CELLS` adds the
#: network-level ones (``lstmp``, ``flstm``, ``glstm``) and :func:`~.rnn_networks.make_cell`
#: builds any of them.
BASIC_CELLS: dict[str, type[RecurrentCell]] = {
    "rnn": RNNCell,
    "lstm": LSTMCell,
    "gru": GRUCell,
    "mgu": MGUCell,
    "slstm": SLSTMCell,
    "janet": JANETCell,
    "phased_lstm": PhasedLSTMCell,
}
