"""The input shape a built model expects, from its build record.

A zoo model fitted to a data set (``modelzip train lenet300 --dataset digits``) records the
``input_shape`` it was built with in ``model._modelzip_source["kwargs"]``; the zoo's default
(``model_info(name).input_shape``, MNIST's ``(1, 28, 28)``) holds only when it was not fitted. Every
place that makes a sample input for a built model asks :func:`model_input_shape`, so that the two
are never confused.
"""

from __future__ import annotations

import torch
from torch import nn

from modelzip.core.running import model_device
from modelzip.models.registry import list_models, model_info, model_source


def model_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """One input's shape (without the batch dimension) that ``model`` was built for.

    The ``input_shape`` of the model's zoo build record first, then the zoo default of its name;
    ``(seq_len,)`` of token ids for language models. None for a model outside the zoo (a
    ``package.module:factory`` model, or one with no build record): its shape is unknown.
    """
    source = model_source(model)
    if source is not None and source.get("kind") == "hf":
        from modelzip.models.hf import input_shape

        return input_shape(model)
    if source is None or source.get("kind") != "zoo" or source.get("name") not in list_models():
        return None
    kwargs = source.get("kwargs")
    recorded = kwargs.get("input_shape") if isinstance(kwargs, dict) else None
    if (
        isinstance(recorded, (list, tuple))
        and recorded
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in recorded)
    ):
        return tuple(recorded)
    return tuple(model_info(source["name"]).input_shape)


def sample_input(
    model: nn.Module, batch: int = 1, shape: tuple[int, ...] | None = None
) -> torch.Tensor | None:
    """A random batch of ``shape`` (default :func:`model_input_shape`) on the model's device:
    token ids (zeros) for a one-dimensional shape, ``[0, 1)`` images otherwise; None when the
    shape is unknown."""
    shape = shape if shape is not None else model_input_shape(model)
    if shape is None:
        return None
    device = model_device(model)
    if len(shape) == 1:  # token ids
        return torch.zeros((batch, *shape), dtype=torch.long, device=device)
    return torch.rand((batch, *shape), device=device)


def max_sequence_length(model: nn.Module) -> int | None:
    """The most tokens one input of ``model`` may hold (a transformer's position table), or
    None when the model sets no limit (recurrent models, image models)."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def sequence_length(model: nn.Module | None, wanted: int) -> int:
    """``wanted`` tokens, or fewer when ``model`` cannot take that many
    (:func:`max_sequence_length`)."""
    limit = max_sequence_length(model) if model is not None else None
    return wanted if limit is None else min(wanted, limit)
