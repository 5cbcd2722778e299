"""In-memory image classification data: :class:`Dataset` and the :func:`batches` iterator.

Everything is held as tensors and batched by indexing; there are no DataLoader workers because the
machines this runs on have two cores, and for data sets of MNIST's size a worker process costs more
than it saves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor

from modelzip.core.errors import DataError

__all__ = ["Dataset", "batches"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An image classification data set held in memory.

    Attributes
    ----------
    name : str
        Registry name or file stem.
    x_train, x_test : Tensor
        float32 images, ``N x C x H x W``, values in ``[0, 1]``.
    y_train, y_test : Tensor
        int64 labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes.
    classes : tuple of str
        A readable name per class.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )

    def split(
        self, val_size: int | float = 5000, seed: int = 0
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Split the training set into training and validation parts.

        Parameters
        ----------
        val_size : int or float
            Number of validation samples, or a fraction of the training set when a float in
            ``(0, 1)``. ``0`` gives an empty validation part.
        seed : int
            Seed of the permutation; the same seed always gives the same split.

        Returns
        -------
        ((x_train, y_train), (x_val, y_val))
            Disjoint parts whose union is the training set.
        """
        n = len(self.x_train)
        n_val = _count(val_size, n)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=gen)
        # Sorting each part keeps the original order inside it, which makes slices of the result
        # (and so anything computed from them) independent of how randperm is implemented.
        val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        return (
            (self.x_train[train_idx], self.y_train[train_idx]),
            (self.x_train[val_idx], self.y_train[val_idx]),
        )

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> Dataset:
        """A smaller copy with ``train`` training and ``test`` test samples drawn at random."""
        gen = torch.Generator().manual_seed(seed)

        def take(x: Tensor, y: Tensor, k: int | None) -> tuple[Tensor, Tensor]:
            if k is None or k >= len(x):
                return x, y
            if k < 1:
                raise DataError(f"subset size must be >= 1, got {k}")
            idx = torch.randperm(len(x), generator=gen)[:k].sort().values
            return x[idx], y[idx]

        x_tr, y_tr = take(self.x_train, self.y_train, train)
        x_te, y_te = take(self.x_test, self.y_test, test)
        return dataclasses.replace(self, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)


def _count(size: int | float, n: int) -> int:
    """Turn a size that may be a fraction into a count, refusing what does not fit in ``n``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise DataError(f"val_size must be an int or a float, got {size!r}")
    if isinstance(size, float) and not size.is_integer():
        if not 0.0 < size < 1.0:
            raise DataError(f"val_size={size!r} as a fraction must be in (0, 1)")
        return round(size * n)
    count = int(size)
    if not 0 <= count < n:
        raise DataError(f"val_size={size!r} must be in [0, {n}) for a training set of {n} samples")
    return count


def batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Iterate over ``(x, y)`` in batches of ``batch_size`` rows.

    Parameters
    ----------
    x, y : Tensor
        Inputs and targets with the same first dimension.
    batch_size : int
        Rows per batch; the last batch is smaller unless ``drop_last``.
    shuffle : bool
        Visit rows in a random order drawn from ``generator``.
    generator : torch.Generator, optional
        Source of the order; pass a seeded one for a reproducible order.
    drop_last : bool
        Skip a final incomplete batch.
    """
    n = len(x)
    if len(y) != n:
        raise DataError(f"x has {n} rows but y has {len(y)}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
