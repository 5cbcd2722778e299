"""ONNX file sizes against ``.mzip`` sizes, per weight format, on LeNet-300-100 (random weights).

    python benchmarks/onnx_sizes.py          # results JSON, BENCHMARKS.md and docs/export.md
    python benchmarks/onnx_sizes.py --quick  # four recipes, onnx_sizes-quick.json only

Check (issue #23): a 4-bit LeNet-300 exports to an ONNX file under 1.3x its ``.mzip``, with
onnxruntime's outputs within 1e-4 of PyTorch's. Each row compresses LeNet-300-100 with one
recipe, saves it (``modelzip.save``) and exports it (``modelzip.export.export_onnx``, default
opset), and reports both sizes, their ratio, how the layers are written and onnxruntime's
largest difference from the compressed layers in PyTorch.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import BenchContext, PartResult, check, run_parts

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


QUICK = ("none (float)", "quantize_weights bits=4", "ternary", "int8")
FOUR_BIT = "quantize_weights bits=4"


def sizes(ctx: BenchContext) -> PartResult:
    rows: list[dict[str, Any]] = []
    for label, steps in RECIPES:
        if ctx.quick and label not in QUICK:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            mzip, onnx, opset, error, forms = measure(steps, Path(tmp))
        rows.append({"recipe": label, "mzip_bytes": mzip, "onnx_bytes": onnx,
                     "ratio": onnx / mzip, "opset": opset, "max_abs_diff": error,
                     "forms": forms})  # fmt: skip
    four = next(r for r in rows if r["recipe"] == FOUR_BIT)
    checks = [
        check("4-bit LeNet-300: .onnx / .mzip bytes", round(four["ratio"], 3), 1.3, "×",
              four["ratio"] < 1.3),
        check("4-bit LeNet-300: onnxruntime vs PyTorch, max abs diff", four["max_abs_diff"],
              1e-4, "", four["max_abs_diff"] < 1e-4),
    ]  # fmt: skip
    markdown = table(rows)
    if not ctx.quick:
        text = DOC.read_text()
        generated = f"{START}\n{markdown}\n{END}"
        pattern = re.escape(START) + ".*?" + re.escape(END)
        DOC.write_text(re.sub(pattern, generated, text, flags=re.S))
    return PartResult(rows, checks, markdown)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| recipe | .mzip bytes | .onnx bytes | onnx / mzip | opset | max abs diff | written as |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['mzip_bytes']:,} | {r['onnx_bytes']:,} | {r['ratio']:.2f} "
            f"| {r['opset']} | {r['max_abs_diff']:.1g} | {r['forms']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_parts(
        "onnx_sizes", "ONNX export sizes", {"sizes": sizes}, __doc__.splitlines()[0], argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
