"""Compact recurrent networks (the survey's Fig. 8) and the sequence runner.

* :class:`LSTMPCell`: LSTM with a linear recurrent projection (Sak et al. 2014),
  ``r = W_r h`` (``p < n``) is fed back and output, so ``U`` is ``4n x p``.
* :class:`FLSTMCell`: factorized LSTM (Kuchaiev & Ginsburg 2017), ``[W U] ~= W_2 W_1`` with
  ``W_1`` ``r x (m + n)`` and ``W_2`` ``4n x r``.
* :class:`GLSTMCell`: group LSTM (Kuchaiev & Ginsburg 2017), ``x`` and ``h`` split into ``G``
  groups each driving its own gates: ``1/G`` of the weights.
* :class:`StackedRNN`: any unit stacked; ``residual=True`` adds each layer's input to its output
  (the residual LSTM stacks of Wu et al. 2016, GNMT).
* :class:`SkipRNN` (Campos et al., ICLR 2018): a learned binary update gate ``u_t = round(ũ_t)``
  (straight-through gradient); ``s_t = u_t S(s_{t-1}, x_t) + (1 - u_t) s_{t-1}``,
  ``Δũ_t = σ(W_p s_t + b_p)``, ``ũ_{t+1} = u_t Δũ_t + (1 - u_t)(ũ_t + min(Δũ_t, 1 - ũ_t))``,
  and the budget loss ``L_budget = λ Σ_t u_t``.

:class:`RecurrentLayer` runs a cell over a sequence: the input projection of all steps is one
matrix product, and the step may be compiled with ``torch.compile`` (``compile=True``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from modelzip.compact.rnn_cells import BASIC_CELLS, LSTMCell, RecurrentCell, State
from modelzip.core.limits import check_positive_ints

__all__ = [
    "CELLS",
    "FLSTMCell",
    "GLSTMCell",
    "GroupedLinear",
    "LSTMPCell",
    "RecurrentLayer",
    "SkipRNN",
    "StackedRNN",
    "make_cell",
    "run_cell",
]


class GroupedLinear(nn.Module):
    """Block-diagonal linear map: the input in ``groups`` parts, each mapped to its output part."""

    def __init__(self, in_features: int, out_features: int, groups: int, bias: bool = True):
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"groups={groups} must divide {in_features} and {out_features}")
        self.groups = groups
        bound = 1 / math.sqrt(in_features // groups)
        w = torch.empty(groups, in_features // groups, out_features // groups)
        self.weight = nn.Parameter(w.uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        xg = x.reshape(-1, self.groups, x.shape[-1] // self.groups)
        y = torch.einsum("ngi,gio->ngo", xg, self.weight).reshape(*lead, -1)
        return y + self.bias if self.bias is not None else y


class LSTMPCell(LSTMCell):
    """LSTM with projection: ``r = W_r (o ⊙ tanh c)`` of size ``proj_size`` is output and fed
    back. Parameters ``4n(m + p + 1) + n p`` against ``4n(m + n + 1)``."""

    def __init__(self, input_size: int, hidden_size: int, proj_size: int) -> None:
        check_positive_ints(proj_size=proj_size)
        self.proj_size = proj_size
        super().__init__(input_size, hidden_size)
        self.proj = nn.Linear(hidden_size, proj_size, bias=False)

    @property
    def recurrent_size(self) -> int:
        return self.proj_size

    def output(self, h: Tensor) -> Tensor:
        return self.proj(h)


class FLSTMCell(LSTMCell):
    """Factorized LSTM: pre-activations ``W_2 (W_1x x + W_1h h) + b`` with inner size ``rank``;
    ``r (m + n) + 4 n r + 4 n`` parameters."""

    def __init__(self, input_size: int, hidden_size: int, rank: int) -> None:
        check_positive_ints(rank=rank)
        self.rank = rank
        super().__init__(input_size, hidden_size)
        self.w2 = nn.Linear(rank, 4 * hidden_size)
        with torch.no_grad():
            self.w2.bias.view(4, -1)[1] = 1.0

    def _maps(self, input_size: int, hidden_size: int) -> tuple[nn.Module, nn.Module]:
        return nn.Linear(input_size, self.rank, bias=False), nn.Linear(
            hidden_size, self.rank, bias=False
        )

    def preactivations(self, gx: Tensor, h: Tensor) -> Tensor:
        return self.w2(gx + self.hh(h))


class GLSTMCell(LSTMCell):
    """Group LSTM: ``G`` independent LSTMs on the slices of ``x`` and ``h``;
    ``4 n (m + n) / G + 4 n`` parameters."""

    def __init__(self, input_size: int, hidden_size: int, groups: int) -> None:
        check_positive_ints(groups=groups)
        self.groups = groups
        super().__init__(input_size, hidden_size)

    def _maps(self, input_size: int, hidden_size: int) -> tuple[nn.Module, nn.Module]:
        g = self.groups
        return GroupedLinear(input_size, 4 * hidden_size, g), GroupedLinear(
            hidden_size, 4 * hidden_size, g, bias=False
        )


#: Every recurrent unit by name: the cells of :mod:`.rnn_cells` and the network-level ones here.
CELLS: dict[str, type[RecurrentCell]] = {
    **BASIC_CELLS,
    "lstmp": LSTMPCell,
    "flstm": FLSTMCell,
    "glstm": GLSTMCell,
}


def make_cell(name: str, input_size: int, hidden_size: int, **kwargs) -> RecurrentCell:
    """Build a cell by name (a :data:`CELLS` name)."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; choose one of {sorted(CELLS)}")
    return CELLS[name](input_size, hidden_size, **kwargs)


def run_cell(
    cell: RecurrentCell, x: Tensor, state: State | None = None, step=None
) -> tuple[Tensor, State]:
    """Run ``cell`` over ``x`` (``T x N x input``): outputs ``T x N x output`` and the last state.

    The input projection of all ``T`` steps is computed at once; ``step`` (default
    ``cell.step``) is then called ``T`` times.
    """
    if state is None:
        state = cell.init_state(x.shape[1], x.device, x.dtype)
    gx = cell.input_projection(x)
    step = step or cell.step
    outputs = []
    for t in range(x.shape[0]):
        h, state = step(gx[t], state)
        outputs.append(h)
    return torch.stack(outputs), state


class RecurrentLayer(nn.Module):
    """A cell run over a batch-first sequence: ``N x T x input`` -> ``N x T x output``.

    ``compile=True`` compiles the step with ``torch.compile`` (the first call is slow; needs a
    C++ compiler on CPU), which fuses the gate arithmetic of each step.
    """

    def __init__(self, cell: RecurrentCell, compile: bool = False) -> None:
        super().__init__()
        self.cell = cell
        self.compile = compile
        self._step = torch.compile(cell.step, dynamic=False) if compile else None

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        out, state = run_cell(self.cell, x.transpose(0, 1), state, self._step)
        return out.transpose(0, 1), state


class StackedRNN(nn.Module):
    """``num_layers`` cells of type ``cell`` (a :data:`CELLS` name),
    batch first; ``residual`` adds each layer's input to its output where the widths agree."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        residual: bool = False,
        compile: bool = False,
        **cell_kwargs,
    ) -> None:
        super().__init__()
        check_positive_ints(num_layers=num_layers)
        layers = []
        size = input_size
        for _ in range(num_layers):
            unit = make_cell(cell, size, hidden_size, **cell_kwargs)
            layers.append(RecurrentLayer(unit, compile))
            size = unit.output_size
        self.layers = nn.ModuleList(layers)
        self.residual = residual
        self.output_size = size

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            y, _ = layer(x)
            x = x + y if self.residual and x.shape[-1] == y.shape[-1] else y
        return x


class _RoundSTE(torch.autograd.Function):
    """``round`` forward, identity backward (Bengio et al. 2013's straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


class SkipRNN(nn.Module):
    """Skip RNN around any cell (module docstring), batch first.

    After a forward pass, :attr:`updates` (``N x T``) holds the gates ``u_t``, and
    :meth:`budget_loss` gives ``λ Σ_t u_t`` averaged over the batch. ``force_open=True`` makes
    every ``u_t = 1``, which is the plain RNN.
    """

    def __init__(self, cell: RecurrentCell, force_open: bool = False) -> None:
        super().__init__()
        self.cell = cell
        self.force_open = force_open
        self.update = nn.Linear(cell.output_size, 1)
        with torch.no_grad():
            self.update.bias.fill_(2.0)  # start near "always update"
        self.updates: Tensor | None = None

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        n, steps = x.shape[0], x.shape[1]
        if state is None:
            state = self.cell.init_state(n, x.device, x.dtype)
        gx = self.cell.input_projection(x.transpose(0, 1))
        u_tilde = x.new_ones(n, 1)
        outputs, gates = [], []
        h = state[0]
        for t in range(steps):
            u = x.new_ones(n, 1) if self.force_open else _RoundSTE.apply(u_tilde)
            # The cell runs on the whole batch; skipped rows keep their state (cost is counted
            # by the number of updates, as in the paper).
            h_new, new_state = self.cell.step(gx[t], state)
            state = tuple(u * a + (1 - u) * b for a, b in zip(new_state, state, strict=True))
            h = u * h_new + (1 - u) * h
            delta = torch.sigmoid(self.update(state[0]))
            u_tilde = u * delta + (1 - u) * (u_tilde + torch.minimum(delta, 1 - u_tilde))
            outputs.append(h)
            gates.append(u)
        self.updates = torch.cat(gates, dim=1)
        return torch.stack(outputs, dim=1), state

    def budget_loss(self, weight: float) -> Tensor:
        """``weight * Σ_t u_t``, batch mean, of the last forward pass."""
        if self.updates is None:
            raise RuntimeError("budget_loss needs a forward pass first")
        return weight * self.updates.sum(dim=1).mean()
