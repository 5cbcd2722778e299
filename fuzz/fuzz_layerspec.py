"""Coverage-guided fuzzing of the layer specs inside `.mzip` files (``modelzip.load``).

The input is JSON that replaces the ``spec`` of every layer of a valid compressed LeNet-5 (the
file's checksum is recomputed, so the spec reaches the layer builders rather than stopping at the
checksum); libFuzzer's ``-timeout`` and ``-rss_limit_mb`` bound each input's time and memory.

See _harness.py; ``make fuzz`` puts fuzz/ and tests/reliability/ on PYTHONPATH.
"""

import json
import tempfile
from pathlib import Path

import torch
from _harness import run
from safetensors import safe_open
from safetensors.torch import save_file

import modelzip
from modelzip.core.errors import ModelError
from modelzip.core.integrity import content_digest
from modelzip.models import create
from modelzip.core.registry import get_method

_FILE: dict = {}


def _seed_file() -> tuple[dict, dict]:
    if not _FILE:
        model = create("lenet5").eval()
        x = torch.rand(4, 1, 28, 28)
        small, _ = modelzip.compress(model, get_method("deep_compression").example, sample=x,
                                     measure=False)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            path = modelzip.save(small, Path(tmp) / "seed.mzip")
            with safe_open(str(path), "pt") as f:
                _FILE["meta"] = json.loads(f.metadata()["modelzip"])
                _FILE["tensors"] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return _FILE["meta"], _FILE["tensors"]


def load_with_spec(path: Path) -> object:
    meta, tensors = _seed_file()
    try:
        spec = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        raise ModelError("not JSON") from None
    meta = {**meta, "layers": {n: {**e, "spec": spec} for n, e in meta["layers"].items()}}
    meta["sha256"] = content_digest(tensors, meta)
    target = path.with_suffix(".mzip")
    save_file(tensors, str(target), metadata={"modelzip": json.dumps(meta)})
    return modelzip.load(target)


def seed(tmp: Path) -> bytes:
    meta, _ = _seed_file()
    return json.dumps(next(iter(meta["layers"].values()))["spec"]).encode()


if __name__ == "__main__":
    run("layerspec", ".json", load_with_spec, seed, attack="Coverage-guided layer specs")
