"""Recurrent models built from :mod:`modelzip.compact`: row-by-row MNIST and character LMs.

Any cell of :data:`modelzip.compact.CELLS` (``lstm``, ``gru``, ``mgu``, ``slstm``, ``janet``,
``phased_lstm``, ``rnn``, ``lstmp``, ``flstm``, ``glstm``) can be chosen by name; ``cell_kwargs``
are passed to it (``{"proj_size": 64}`` for LSTMP, ``{"rank": 32}`` for F-LSTM ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from modelzip.compact.rnn_networks import SkipRNN, StackedRNN, make_cell
from modelzip.core.limits import check_positive_ints
from modelzip.data.text import SHAKESPEARE_VOCAB_SIZE
from modelzip.models.common import MNIST_SHAPE, Normalize, check_shape
from modelzip.models.registry import register_model


class RowRNNClassifier(nn.Module):
    """Reads an image one row per time step (``H`` steps of ``C W`` values), classifies from the
    last output: ``normalize`` -> ``rnn`` -> ``fc``."""

    def __init__(self, rnn: StackedRNN, num_classes: int) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.rnn = rnn
        self.fc = nn.Linear(rnn.output_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(n, h, c * w)
        return self.fc(self.rnn(rows)[:, -1])


class CharRNN(nn.Module):
    """``embedding`` -> ``rnn`` (a :class:`StackedRNN`, or a :class:`SkipRNN`) -> ``fc``."""

    def __init__(self, vocab_size: int, embed_dim: int, rnn: nn.Module, out_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = rnn
        self.fc = nn.Linear(out_size, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        out = self.rnn(self.embedding(x))
        return self.fc(out[0] if isinstance(out, tuple) else out)


@register_model(
    "rnn_mnist",
    "row-by-row MNIST (28 steps of 28 pixels) with any compact RNN unit, last output to fc",
    MNIST_SHAPE,
    "mnist",
)
def rnn_mnist(
    input_shape: Sequence[int] = MNIST_SHAPE,
    num_classes: int = 10,
    cell: str = "lstm",
    hidden_size: int = 64,
    num_layers: int = 1,
    cell_kwargs: dict[str, Any] | None = None,
) -> RowRNNClassifier:
    """A :class:`RowRNNClassifier` with ``num_layers`` ``cell`` units of ``hidden_size``."""
    c, _, w = check_shape(input_shape, num_classes)
    check_positive_ints(hidden_size=hidden_size, num_layers=num_layers)
    rnn = StackedRNN(cell, c * w, hidden_size, num_layers, **(cell_kwargs or {}))
    return RowRNNClassifier(rnn, num_classes)


@register_model(
    "rnn_char",
    "character LM with any compact RNN unit: embedding 64, stacked cells, linear to vocabulary",
    (128,),
    "shakespeare",
)
def rnn_char(
    vocab_size: int = SHAKESPEARE_VOCAB_SIZE,
    embed_dim: int = 64,
    cell: str = "lstm",
    hidden_size: int = 256,
    num_layers: int = 2,
    residual: bool = False,
    skip: bool = False,
    cell_kwargs: dict[str, Any] | None = None,
) -> CharRNN:
    """Residual stacks with ``residual=True``; ``skip=True`` wraps one cell in a Skip RNN."""
    check_positive_ints(
        vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size, num_layers=num_layers
    )
    if skip:
        if num_layers != 1:
            raise ValueError(f"skip=True supports num_layers=1, got {num_layers}")
        unit = make_cell(cell, embed_dim, hidden_size, **(cell_kwargs or {}))
        return CharRNN(vocab_size, embed_dim, SkipRNN(unit), unit.output_size)
    rnn = StackedRNN(cell, embed_dim, hidden_size, num_layers, residual, **(cell_kwargs or {}))
    return CharRNN(vocab_size, embed_dim, rnn, rnn.output_size)
