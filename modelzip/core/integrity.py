"""Content checksums of the safetensors files modelzip writes.

safetensors checks a file's structure but not its contents: a flipped bit in the tensor data loads
silently as a different model. Every file modelzip writes (``.mzip`` models, weight checkpoints,
training checkpoints) carries, in its header metadata, a SHA-256 over its other metadata and every
tensor's name, dtype, shape and bytes; readers verify it before using anything. The checksum guards
against corruption (disk, transfer, truncation), not against someone who rewrites the file: that
needs a signature, which the user's own channel must provide.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from modelzip.core.errors import ModelError

#: The key of the hex digest in the file's JSON document (the ``.mzip`` metadata, a checkpoint's
#: sidecar or a training checkpoint's index).
DIGEST_KEY = "sha256"


def content_digest(
    tensors: Mapping[str, torch.Tensor], document: Mapping[str, Any] | None = None
) -> str:
    """SHA-256 (hex) over ``document`` (canonical JSON, less the digest itself) and ``tensors``
    (name, dtype, shape and bytes of each, by sorted name)."""
    h = hashlib.sha256()

    def put(text: str) -> None:
        data = text.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    doc = {k: v for k, v in (document or {}).items() if k != DIGEST_KEY}
    put(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    for name in sorted(tensors):
        t = tensors[name].detach()
        put(name)
        put(str(t.dtype))
        put(",".join(map(str, t.shape)))
        h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return h.hexdigest()


def verify_digest(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    document: Mapping[str, Any],
    *,
    required: bool = True,
) -> bool:
    """Check ``document[DIGEST_KEY]``; raise :class:`ModelError` on a mismatch (or, if
    ``required``, on a missing digest). Returns whether a digest was present."""
    stored = document.get(DIGEST_KEY)
    if stored is None:
        if required:
            raise ModelError(f"{path}: no content checksum ({DIGEST_KEY}); the file is damaged")
        return False
    if stored != content_digest(tensors, document):
        raise ModelError(
            f"{path}: content checksum mismatch: the file was damaged or changed after it was "
            "written (a flipped byte in its tensors or metadata)"
        )
    return True


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or ±Inf."""
    return [
        name
        for name, t in tensors.items()
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
    ]
