"""ONNX file sizes against ``.mzip`` sizes, per weight format, on LeNet-300-100 (random weights).

    python benchmarks/onnx_sizes.py            # regenerates the table in docs/export.md

Each row compresses LeNet-300-100 with one recipe, saves it (``modelzip.save``) and exports it
(``modelzip.export.export_onnx``, default opset), and reports both sizes, their ratio, how the
layers are written and onnxruntime's largest difference from the compressed layers in PyTorch.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "export.md"
START, END = "<!-- onnx-sizes:start -->", "<!-- onnx-sizes:end -->"

RECIPES: list[tuple[str, list[dict]]] = [
    ("none (float)", []),
    ("quantize_weights bits=4", [{"method": "quantize_weights", "bits": 4}]),
    ("quantize_weights bits=2", [{"method": "quantize_weights", "bits": 2}]),
    ("quantize_weights bits=4 group", [{"method": "quantize_weights", "bits": 4,
                                        "granularity": "group"}]),
    ("quantize_weights bits=4 log2", [{"method": "quantize_weights", "bits": 4,
                                       "levels": "log2"}]),
    ("quantize_weights bits=3 adaptive", [{"method": "quantize_weights", "bits": 3,
                                           "levels": "adaptive"}]),
    ("quantize_weights bits=6", [{"method": "quantize_weights", "bits": 6}]),
    ("binary", [{"method": "binary"}]),
    ("ternary", [{"method": "ternary"}]),
    ("multibit num_bases=2", [{"method": "multibit"}]),
    ("weight_sharing bits=4", [{"method": "weight_sharing", "bits": 4}]),
    ("magnitude_prune 0.8 + sparse_quantize bits=4", [
        {"method": "magnitude_prune", "sparsity": 0.8}, {"method": "sparse_quantize", "bits": 4}]),
    ("magnitude_prune 0.8", [{"method": "magnitude_prune", "sparsity": 0.8}]),
    ("int8", [{"method": "int8"}]),
]  # fmt: skip


def measure(steps: list[dict], workdir: Path) -> tuple[int, int, int, float, str]:
    """``(mzip bytes, onnx bytes, opset, max |diff|, layer forms)`` of LeNet-300 under ``steps``."""
    import modelzip
    from modelzip.api import compress
    from modelzip.deploy import trainable
    from modelzip.export import export_onnx, run_onnx
    from modelzip.models import create
    from modelzip.recipe import Recipe

    torch.manual_seed(0)
    sample = torch.rand(8, 1, 28, 28)
    model = create("lenet300").eval()
    if steps:
        model, _ = compress(
            model, Recipe.from_list(steps), sample=sample, evaluate=False, measure=False
        )
    mzip = modelzip.save(model, workdir / "m.mzip").stat().st_size
    result = export_onnx(model, workdir / "m.onnx", sample, check=False)
    with torch.no_grad():
        ref = trainable(model).eval()(sample)
    error = float((run_onnx(workdir / "m.onnx", sample) - ref).abs().max())
    forms = "; ".join(sorted(set(result.layers.values()))) or "plain float layers"
    return mzip, result.file_bytes, result.opset, error, forms


def table() -> str:
    lines = [
        "| recipe | .mzip bytes | .onnx bytes | onnx / mzip | opset | max abs diff | written as |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, steps in RECIPES:
        with tempfile.TemporaryDirectory() as tmp:
            mzip, onnx, opset, error, forms = measure(steps, Path(tmp))
        lines.append(
            f"| {label} | {mzip:,} | {onnx:,} | {onnx / mzip:.2f} | {opset} | {error:.1g} "
            f"| {forms} |"
        )
    return "\n".join(lines)


def main() -> int:
    sys.path.insert(0, str(REPO))
    torch.set_num_threads(1)
    text = DOC.read_text()
    generated = f"{START}\n{table()}\n{END}"
    DOC.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), generated, text, flags=re.S))
    print(generated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
