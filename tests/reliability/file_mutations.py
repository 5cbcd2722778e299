"""Valid example files of each format modelzip reads, and byte-level mutations of them.

Shared by the Hypothesis fuzz tests (tests/reliability/test_fuzz_files.py) and the atheris
fuzzers (fuzz/), which start from these seeds.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save as save_safetensors
from torch import nn

RECIPE_SEED = yaml.safe_dump(
    [
        {"method": "magnitude_prune", "sparsity": 0.5, "select": {"types": ["Linear"]}},
        {"method": "quantize_weights", "bits": 4, "granularity": "group", "group_size": 8},
        {"method": "svd", "rank_fraction": 0.5},
    ]
).encode()


def spec_seed() -> bytes:
    from modelzip.hardware.presets import get_accelerator

    return yaml.safe_dump(get_accelerator("eyeriss").to_dict(), sort_keys=False).encode()


def npz_seed() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        x_train=rng.integers(0, 255, (8, 4, 4), dtype=np.uint8),
        y_train=rng.integers(0, 3, 8),
        x_test=rng.random((4, 4, 4), dtype=np.float32),
        y_test=rng.integers(0, 3, 4),
        classes=np.array(["a", "b", "c"]),
    )
    return buffer.getvalue()


def mzip_seed(tmp: Path) -> bytes:
    """A small compressed LeNet-5 file (pruned, quantized and SVD layers), for 16x16 inputs so
    that the file stays small (about 60 kB) and mutations reach the structure often."""
    import modelzip
    from modelzip.core.selection import Select
    from modelzip.decompose.configs import SVDConfig
    from modelzip.prune.magnitude import MagnitudePruneConfig
    from modelzip.quantize.weights import QuantizeWeightsConfig

    torch.manual_seed(0)
    model = modelzip.models.create("lenet5", input_shape=[1, 16, 16])
    recipe = [
        MagnitudePruneConfig(sparsity=0.5, select=Select(names=("conv1",))),
        QuantizeWeightsConfig(bits=4, select=Select(names=("conv2",))),
        SVDConfig(select=Select(names=("fc1",))),
    ]
    small, _ = modelzip.compress(model, recipe, sample=torch.rand(2, 1, 16, 16), measure=False)
    path = modelzip.save(small, tmp / "seed.mzip")
    return path.read_bytes()


def mzip_with_metadata(meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    """A safetensors file holding ``tensors`` and ``meta`` as its modelzip JSON."""
    tensors = tensors or {"w": torch.zeros(1)}
    return save_safetensors(tensors, metadata={"modelzip": json.dumps(meta)})


def lenet_layer_meta(**torch_layers: dict) -> dict:
    return {
        "format": "modelzip/1",
        "source": {"kind": "zoo", "name": "lenet300", "kwargs": {}},
        "recipe": [],
        "layers": {},
        "torch_layers": torch_layers,
    }


def mutate(data: bytes, rng: random.Random, rounds: int = 3) -> bytes:
    """``data`` with a few random byte edits: flips, overwrites, truncation, insertion, splices."""
    buf = bytearray(data)
    for _ in range(rounds):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1) if buf else 0
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice([0, 0xFF, 0x7F, 0x80, ord("9"), ord("[")])
        elif op == 2:
            del buf[pos:]
        elif op == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 4 and len(buf) > 8:
            # Overwrite 8 bytes with a large little-endian integer (lengths, offsets, shapes).
            value = rng.choice([2**31, 2**40, 2**63 - 1, 0, len(buf) * 4])
            buf[pos : pos + 8] = value.to_bytes(8, "little")[: max(0, len(buf) - pos)]
        elif op == 5 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randrange(1, 64)]
    return bytes(buf)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3))
