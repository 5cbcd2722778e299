"""Plain (uncompressed) model checkpoints: safetensors weights plus a JSON sidecar, no pickle.

``save_checkpoint(model, "m.safetensors", {...})`` writes ``m.safetensors`` (the state dict) and
``m.json`` (how to rebuild the model, :mod:`modelzip.models.registry`'s source record, plus the
caller's metadata). :func:`load_checkpoint` rebuilds the model from that record. Weights from
elsewhere load into a given model with :func:`load_user_weights` (``.pt`` files through
``torch.load(weights_only=True)``, which refuses arbitrary objects).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from modelzip.core.atomic import atomic_path, write_json
from modelzip.core.errors import ModelError
from modelzip.core.integrity import DIGEST_KEY, content_digest, verify_digest
from modelzip.models.registry import build_from_source, model_source

__all__ = [
    "load_checkpoint",
    "load_state_dict_checked",
    "load_user_weights",
    "read_checkpoint_metadata",
    "save_checkpoint",
]

FORMAT = "modelzip-checkpoint/1"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def _json_safe(value: Any) -> Any:
    """``value`` as JSON data; configs (anything with ``to_dict``) become dicts, the rest repr."""
    return json.loads(
        json.dumps(value, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else repr(o))
    )


def save_checkpoint(
    model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s state dict to ``path`` (safetensors) and metadata to ``path.json``.

    Parameters
    ----------
    model : nn.Module
        Its build record (``model._modelzip_source``), if any, is stored so that
        :func:`load_checkpoint` can rebuild it.
    path : str or Path
        The weights file; the sidecar is ``path.with_suffix('.json')``.
    metadata : dict, optional
        Anything JSON-able (train config, accuracy, seconds ...); objects with ``to_dict`` are
        converted.

    Returns
    -------
    Path
        The sidecar's path.
    """
    path = Path(path)
    state = model.state_dict()
    tensors: dict[str, Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise ModelError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        # A copy per entry: safetensors refuses tensors that share storage (tied weights).
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
    # The caller's metadata may supply a "source" for a model built without one.
    meta = {"source": model_source(model), "torch_version": torch.__version__}
    meta |= _json_safe(metadata or {})
    meta["format"] = FORMAT
    meta[DIGEST_KEY] = content_digest(tensors)  # of the weights file, checked by load_checkpoint
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    sidecar = path.with_suffix(".json")
    write_json(sidecar, meta)
    return sidecar


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint written by :func:`save_checkpoint`."""
    sidecar = Path(path).with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise ModelError(f"checkpoint metadata {sidecar} is missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read checkpoint metadata {sidecar}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{sidecar} is not a modelzip checkpoint (format {FORMAT})")
    return meta


def load_checkpoint(
    path: str | Path, model: nn.Module | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or Path
        The ``.safetensors`` file (its ``.json`` sidecar must be next to it).
    model : nn.Module, optional
        Load into this model; by default the model is rebuilt from the stored build record.

    Returns
    -------
    (model, metadata)
        The model in eval mode, on the device it was on (CPU when rebuilt), and the sidecar.
    """
    meta = read_checkpoint_metadata(path)
    if model is None:
        if not meta.get("source"):
            raise ModelError(f"{path} does not record how to build its model; pass model=")
        model = build_from_source(meta["source"])
    state = _read_state_dict(Path(path))
    # Older checkpoints have no checksum in their sidecar: they load as before.
    verify_digest(path, state, {DIGEST_KEY: meta[DIGEST_KEY]} if DIGEST_KEY in meta else {},
                  required=False)  # fmt: skip
    load_state_dict_checked(model, state, str(path))
    return model.eval(), meta


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ModelError(f"no such weights file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"cannot read {path} as safetensors: {e}") from None
    if suffix not in TORCH_SUFFIXES:
        raise ModelError(f"{path}: unknown weights format; use .safetensors or {TORCH_SUFFIXES}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... on bad files
        raise ModelError(f"cannot read {path} with torch.load(weights_only=True): {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values())):
        raise ModelError(
            f"{path} holds no state dict (a dict of tensors, or {{'state_dict': ...}})"
        )
    return obj


def load_state_dict_checked(model: nn.Module, state: dict[str, Tensor], where: str) -> nn.Module:
    """``model.load_state_dict(state)``, with a ModelError listing the first mismatches."""
    expected = model.state_dict()
    if set(state) != set(expected) and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}  # saved from DataParallel
    problems = [f"missing {k!r}" for k in expected if k not in state]
    problems += [f"unexpected {k!r}" for k in state if k not in expected]
    problems += [
        f"{k!r} has shape {tuple(v.shape)}, the model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ModelError(f"{where} does not fit the model: {'; '.join(problems[:5])}{more}")
    model.load_state_dict(state)
    return model


def load_user_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from ``.safetensors`` or ``.pt``/``.pth``/``.bin`` into ``model`` (in place).

    A torch file may hold a bare state dict or ``{'state_dict': ...}``; it is read with
    ``torch.load(path, map_location='cpu', weights_only=True)``, so no code in it runs.

    Raises
    ------
    ModelError
        The file is missing or unreadable, or its keys or shapes do not match the model (the
        message lists the first few mismatches).
    """
    path = Path(path)
    return load_state_dict_checked(model, _read_state_dict(path), str(path))
