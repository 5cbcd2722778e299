"""A character-level LSTM language model (Karpathy's char-rnn, in the size used for Shakespeare)."""

from __future__ import annotations

from torch import Tensor, nn

from modelzip.core.limits import check_positive_ints
from modelzip.data.text import SHAKESPEARE_VOCAB_SIZE
from modelzip.models.registry import register_model


class CharLSTM(nn.Module):
    """``embedding`` -> ``lstm`` (batch first) -> ``fc``: ``N x T`` ids to ``N x T x V`` logits."""

    def __init__(
        self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(
            embed_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.embedding(x))
        return self.fc(out)


@register_model(
    "char_lstm",
    "character LSTM language model: embedding 64, 2 x LSTM 256, linear to the vocabulary",
    (128,),
    "shakespeare",
)
def char_lstm(
    vocab_size: int = SHAKESPEARE_VOCAB_SIZE,
    embed_dim: int = 64,
    hidden_size: int = 256,
    num_layers: int = 2,
    dropout: float = 0.0,
) -> CharLSTM:
    """A next-character model; the default vocabulary is the Shakespeare corpus's 84 characters."""
    check_positive_ints(
        vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size, num_layers=num_layers
    )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return CharLSTM(vocab_size, embed_dim, hidden_size, num_layers, dropout)
