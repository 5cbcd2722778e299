"""Token data for language models: ``.npy`` token ids, or a text file and a local tokenizer.

A token corpus is a :class:`~modelzip.data.text.TextCorpus` whose ids come from a tokenizer
instead of a character table: one stream of int64 token ids, split contiguously 90/5/5 into
train/validation/test, so calibration, evaluation and fine-tuning (next-token loss) take it as
they take Shakespeare.

- ``tokens.npy``: a one- or two-dimensional array of non-negative integer ids (rows are
  concatenated); the vocabulary is ``max id + 1``. Read with ``allow_pickle=False``.
- ``text.txt`` with a tokenizer: a *local* Hugging Face tokenizer directory (``tokenizer.json``
  and friends), given as ``tokenizer=`` or, on the command line, ``--tokenizer DIR``; it is loaded
  with ``local_files_only=True`` and without remote code, so nothing is downloaded or run.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelzip.core.errors import DataError
from modelzip.core.scoped import scoped
from modelzip.data.text import TextCorpus

__all__ = ["TokenCorpus", "load_token_file", "tokenizer_dir"]

#: Token ids beyond this are refused (no tokenizer has a vocabulary that large).
MAX_VOCAB = 1 << 24
#: A text file larger than this is refused unread.
MAX_TEXT_BYTES = 256 << 20

_TOKENIZER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "modelzip_tokenizer", default=None
)


@contextlib.contextmanager
def tokenizer_dir(path: str | Path | None) -> Iterator[None]:
    """Within the block, text files are tokenized with the local tokenizer at ``path``."""
    with scoped(_TOKENIZER, None if path is None else str(path)):
        yield


@dataclasses.dataclass(frozen=True, eq=False)
class TokenCorpus(TextCorpus):
    """A :class:`TextCorpus` of tokenizer ids (``vocab`` is empty: ids are not characters).

    Attributes
    ----------
    n_tokens : int
        The vocabulary size (largest id + 1, or the tokenizer's).
    tokenizer : object or None
        The tokenizer the text was encoded with, if any (for :meth:`encode`/:meth:`decode`).
    """

    n_tokens: int = 0
    tokenizer: Any = None

    @property
    def vocab_size(self) -> int:
        return self.n_tokens

    def encode(self, text: str) -> Tensor:
        if self.tokenizer is None:
            raise DataError(f"{self.name} holds token ids without a tokenizer to encode text")
        return torch.tensor(self.tokenizer.encode(text), dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        if self.tokenizer is None:
            raise DataError(f"{self.name} holds token ids without a tokenizer to decode them")
        return str(self.tokenizer.decode(torch.as_tensor(ids).reshape(-1).tolist()))


def _split(name: str, ids: Tensor, n_tokens: int, tokenizer: Any = None) -> TokenCorpus:
    if len(ids) < 3:
        raise DataError(f"{name}: {len(ids)} tokens are too few to split into train/val/test")
    n_train, n_val = int(len(ids) * 0.9), int(len(ids) * 0.05)
    return TokenCorpus(
        name=name,
        vocab="",
        train=ids[:n_train].clone(),
        val=ids[n_train : n_train + n_val].clone(),
        test=ids[n_train + n_val :].clone(),
        n_tokens=n_tokens,
        tokenizer=tokenizer,
    )


def _load_npy(path: Path) -> TokenCorpus:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a .npy array of token ids: {e}") from None
    if not isinstance(a, np.ndarray) or a.ndim not in (1, 2) or not a.size:
        raise DataError(f"{path}: token ids must be a non-empty 1-D or 2-D array")
    if not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{path}: token ids must be integers, not {a.dtype}")
    if a.min() < 0 or a.max() >= MAX_VOCAB:
        raise DataError(
            f"{path}: token ids must lie in [0, {MAX_VOCAB:,}); found {a.min()}..{a.max()}"
        )
    ids = torch.from_numpy(a.reshape(-1).astype(np.int64))
    return _split(path.name, ids, int(a.max()) + 1)


def _load_tokenizer(directory: str) -> Any:
    path = Path(directory)
    if not path.is_dir():
        raise DataError(
            f"tokenizer {directory!r} is not a local directory; tokenizers are never downloaded: "
            "give the directory holding its tokenizer.json (or vocab files)"
        )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(
            "tokenizing a text file needs transformers: pip install transformers"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = (str(e).splitlines() or [""])[0][:200]
        raise DataError(f"cannot load a tokenizer from {path}: {reason}") from None


def load_token_file(path: str | Path, tokenizer: str | Path | None = None) -> TokenCorpus:
    """A :class:`TokenCorpus` from ``.npy`` token ids, or from a text file and a tokenizer
    directory (``tokenizer``, else the one :func:`tokenizer_dir` set)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    if path.suffix == ".npy":
        return _load_npy(path)
    directory = str(tokenizer) if tokenizer is not None else _TOKENIZER.get()
    if directory is None:
        raise DataError(
            f"{path} is text: tokenizing it needs the model's tokenizer as a local directory "
            "(tokenizer=... or --tokenizer DIR); tokenizers are never downloaded. Or save the "
            "token ids as a .npy file"
        )
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise DataError(f"{path}: a text file larger than {MAX_TEXT_BYTES:,} bytes is refused")
    tok = _load_tokenizer(directory)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from None
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    return _split(path.name, ids, len(tok), tok)
