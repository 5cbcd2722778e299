"""Training checkpoints for resuming: model, optimizer, step, history and RNG states, no pickle.

:func:`modelzip.train.train` with ``checkpoint_dir`` calls :func:`save_training_state` after
every epoch and :func:`load_training_state` before the first. A checkpoint is two files:

* ``epoch-N.safetensors``: every tensor (model state, optimizer state, RNG states), and
* ``checkpoint.json``: the epoch, step, history, the optimizer's non-tensor state, the training
  config and the name of the tensors file.

The tensors file is written first (atomically), then the JSON is atomically replaced, then the
previous tensors file is removed; a run killed at any moment leaves a JSON that names a complete
tensors file, so the rerun resumes from the last finished epoch.

torch's own ``torch.save`` of optimizer state would pickle; the optimizer state dict is split by
hand into tensors and JSON here because no library offers a pickle-free form of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from modelzip.core.atomic import atomic_path, write_json
from modelzip.core.errors import ConfigError, ModelError
from modelzip.core.integrity import DIGEST_KEY, content_digest, verify_digest

__all__ = ["TrainingState", "load_training_state", "save_training_state"]

FORMAT = "modelzip-train-checkpoint/1"
INDEX = "checkpoint.json"


class TrainingState:
    """What a resumed run continues from: epochs done, steps taken and the history so far."""

    def __init__(self, epoch: int, step: int, history: list[dict[str, Any]]) -> None:
        self.epoch, self.step, self.history = epoch, step, history


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "state": plain}


def _optimizer_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in plain["state"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": plain["param_groups"]}


def save_training_state(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
    config: dict[str, Any],
) -> None:
    """Write the state after ``epoch`` epochs (see the module docstring for the protocol)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optimizer_tensors, optimizer_plain = _optimizer_parts(optimizer)
    tensors |= optimizer_tensors
    tensors["rng.shuffle"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    # safetensors wants contiguous CPU tensors that share no memory (tied weights share).
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    name = f"epoch-{epoch}.safetensors"
    with atomic_path(directory / name) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    old = _read_index(directory)
    write_json(
        directory / INDEX,
        {
            "format": FORMAT,
            "epoch": epoch,
            "step": step,
            "tensors": name,
            "history": history,
            "optimizer": optimizer_plain,
            "config": config,
            DIGEST_KEY: content_digest(tensors),
        },
    )
    if old is not None and old.get("tensors") != name:
        (directory / str(old["tensors"])).unlink(missing_ok=True)
    for stale in directory.glob("epoch-*.safetensors"):  # left by a run killed mid-write
        if stale.name != name:
            stale.unlink(missing_ok=True)


def _read_index(directory: Path) -> dict[str, Any] | None:
    path = directory / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ModelError(f"{path} is not a readable training checkpoint: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ModelError(f"{path} is not a modelzip training checkpoint ({FORMAT})")
    return index


def load_training_state(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    config: dict[str, Any],
) -> TrainingState | None:
    """Restore the last checkpoint in ``directory`` into the objects given; None if there is none.

    Raises
    ------
    ConfigError
        The checkpoint was written by a run with another training config.
    ModelError
        The checkpoint is unreadable or does not fit the model.
    """
    for temporary in directory.glob(".*.tmp"):  # left by a run killed while writing
        temporary.unlink(missing_ok=True)
    index = _read_index(directory)
    if index is None:
        return None
    if index.get("config") != config:
        theirs = index.get("config") or {}
        changed = sorted(k for k in set(config) | set(theirs) if config.get(k) != theirs.get(k))
        raise ConfigError(
            f"{directory} holds a checkpoint of a run with another config (differs in "
            f"{changed}); use a new checkpoint folder or the same settings"
        )
    path = directory / str(index["tensors"])
    for stale in directory.glob("epoch-*.safetensors"):  # a kill between the JSON and the unlink
        if stale.name != path.name:
            stale.unlink(missing_ok=True)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"cannot read training checkpoint {path}: {e}") from None
    if DIGEST_KEY in index:  # checkpoints of older versions have none
        verify_digest(path, tensors, {DIGEST_KEY: index[DIGEST_KEY]})
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(
            _optimizer_state(
                {k: v.to(device) for k, v in tensors.items() if k.startswith("optimizer.")},
                index["optimizer"],
            )
        )
    except (RuntimeError, KeyError, ValueError) as e:
        raise ModelError(f"training checkpoint {path} does not fit the model: {e}") from None
    generator.set_state(tensors["rng.shuffle"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return TrainingState(int(index["epoch"]), int(index["step"]), list(index["history"]))
