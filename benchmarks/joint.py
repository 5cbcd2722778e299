"""Joint compression benchmark: Deep Compression's LeNet table reproduced, plus the parts of
``benchmarks/_joint_more.py`` (decomposition with pruning, quantization with sparsity, compact
models with the others, automatic compression).

Usage: ``python benchmarks/joint.py [--quick] [--parts deep,...] [--keep]``.
``--quick`` (under 5 minutes) retrains less, so its accuracy numbers are not the paper comparison;
it writes ``results/joint-quick.json`` and leaves BENCHMARKS.md alone. ``--parts`` with ``--keep``
reruns some parts and keeps the others' last results.
"""

from __future__ import annotations

import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    BenchContext,
    PartResult,
    check,
    load_mnist,
    markdown_table,
    run_parts,
)
from _joint_more import PARTS as MORE_PARTS

KB = 1000  # the paper's kilobytes (1070 KB for LeNet-300-100's 1,066,440 bytes)

#: Han, Mao, Dally, "Deep Compression", ICLR 2016: Table 1 (errors, sizes), Tables 2-3 (stages).
PUBLISHED = {
    "lenet300": {
        "baseline_error": 1.64,
        "error": 1.58,
        "original_kb": 1070,
        "compressed_kb": 27,
        "ratio": 40,
        "pruned_ratio": 12,
        "quantized_ratio": 32,
        "kept": 0.08,
        "bits": "6 (all layers)",
    },
    "lenet5": {
        "baseline_error": 0.80,
        "error": 0.74,
        "original_kb": 1720,
        "compressed_kb": 44,
        "ratio": 39,
        "pruned_ratio": 12,
        "quantized_ratio": 33,
        "kept": 0.08,
        "bits": "8 conv / 5 fc",
    },
}
#: Our settings: the paper's bit-widths; 5-bit relative indices (its Tables 2-3).
BITS = {
    "lenet300": {"fc1": 6, "fc2": 6, "fc3": 6},
    "lenet5": {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5},
}
#: Relative-index width per layer: None chooses the width whose Huffman-coded streams are
#: smallest (the paper fixes 5 bits; with Huffman coding wider indices and fewer padding entries
#: came out smaller, see the per-layer table).
INDEX_BITS = None
#: Codebooks and biases are stored as float16 (rounded once after fine-tuning; the model computes
#: with the rounded values, so the file still decodes to identical outputs).
VALUE_DTYPE = "float16"
TARGET_ERROR = {"lenet300": 1.7, "lenet5": 0.85}


def header_bytes(path: Path) -> int:
    """Bytes of a safetensors file before its tensor data: the 8-byte length and the JSON header
    (tensor table and modelzip's metadata)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def _deep(name: str, quick: bool, data: Any) -> tuple[dict, list[dict]]:
    from prune import _han, baseline

    import modelzip
    from modelzip.core.counting import module_bytes
    from modelzip.joint.deep_compression import breakdown, share, to_coded
    from modelzip.train import TrainConfig, evaluate, train

    base = baseline(name)
    t0 = time.perf_counter()
    # Stage 1: Han et al. 2015's iterative pruning, as benchmarks/prune.py reproduces it.
    pruned_models: dict[str, torch.nn.Module] = {}
    han_row, _ = _han(name, quick, pruned_models)
    pruned = pruned_models[name]
    prune_seconds = time.perf_counter() - t0
    # Stage 2: k-means sharing (linear init), then the centroids are fine-tuned with the summed
    # gradients of their weights; stage 3 (Huffman) is lossless.
    shared = share(pruned, BITS[name], init="linear", iterations=100)
    shared_acc = evaluate(shared, data)["accuracy"]
    finetune = TrainConfig(
        epochs=1 if quick else 2,
        lr=1e-3,
        weight_decay=0.0,
        augment=True,
        schedule="cosine",
        threads=torch.get_num_threads(),
    )
    t1 = time.perf_counter()
    train(shared, data, finetune, progress=False)
    coded = to_coded(shared, INDEX_BITS, VALUE_DTYPE).eval()
    finetune_seconds = time.perf_counter() - t1
    error = 100 * (1 - evaluate(coded, data)["accuracy"])
    stages = breakdown(coded, base)
    with tempfile.TemporaryDirectory() as tmp:
        path = modelzip.save(coded, Path(tmp) / f"{name}.mzip")
        file_bytes = path.stat().st_size
        header = header_bytes(path)
        loaded = modelzip.load(path)
        x = data.x_test
        with torch.inference_mode():
            identical = all(
                torch.equal(loaded(x[i : i + 1000]), coded(x[i : i + 1000]))
                for i in range(0, len(x), 1000)
            )
        loaded_error = 100 * (1 - evaluate(loaded, data)["accuracy"])
    payload = module_bytes(coded)
    original = stages["original"]
    ratio = original / file_bytes
    pub = PUBLISHED[name]
    row = {
        "model": name,
        "baseline_error": han_row["baseline_error"],
        "pruned_error": han_row["pruned_error"],
        "pruned_params_ratio": han_row["compression_params"],
        "shared_error_before_finetune": 100 * (1 - shared_acc),
        "error": error,
        "loaded_error": loaded_error,
        "original_bytes": original,
        "pruned_bytes": stages["pruned"],
        "quantized_bytes": stages["quantized"],
        "huffman_payload_bytes": stages["huffman"],
        "file_bytes": file_bytes,
        "header_bytes": header,
        "payload_bytes": payload,
        "pruned_ratio": original / stages["pruned"],
        "quantized_ratio": original / stages["quantized"],
        "file_ratio": ratio,
        "huffman_saving": 1 - stages["huffman"] / stages["quantized"],
        "layers": stages["layers"],
        "kept": han_row["kept"],
        "bits": BITS[name],
        "index_bits": {k: v["index_bits"] for k, v in stages["layers"].items()},
        "value_dtype": VALUE_DTYPE,
        "decoded_identical": identical,
        "finetune_epochs": finetune.epochs,
        "prune_retrain_epochs": han_row["retrain_epochs"],
        "seconds": {"prune": prune_seconds, "finetune": finetune_seconds},
        "published": pub,
    }
    target_kb = pub["compressed_kb"]
    checks = [
        check(f"{name}: file size", file_bytes / KB, target_kb, "KB", file_bytes / KB <= target_kb),
        check(f"{name}: compression (file)", ratio, pub["ratio"], "x", ratio >= pub["ratio"]),
        check(
            f"{name}: test error",
            error,
            TARGET_ERROR[name],
            "%",
            error <= TARGET_ERROR[name],
        ),
        check(
            f"{name}: file bytes - (tensor bytes + header)",
            file_bytes - payload - header,
            0,
            "B",
            file_bytes == payload + header,
        ),
        check(f"{name}: loaded file gives identical outputs", float(identical), 1, "", identical),
    ]
    return row, checks


def _stage_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        p = r["published"]
        orig = r["original_bytes"]
        stage_rows = [
            ("original (float32)", orig, r["baseline_error"], f"{p['original_kb']} KB, 1x"),
            (
                f"pruned ({r['pruned_params_ratio']:.1f}x fewer weights)",
                r["pruned_bytes"],
                r["pruned_error"],
                f"{p['pruned_ratio']}x fewer weights",
            ),
            (
                "+ quantized (k-means), before / after centroid fine-tuning",
                r["quantized_bytes"],
                (r["shared_error_before_finetune"], r["error"]),
                f"{p['quantized_ratio']}x",
            ),
            ("+ Huffman (tensors)", r["huffman_payload_bytes"], r["error"], ""),
            (
                "file on disk (with header)",
                r["file_bytes"],
                r["loaded_error"],
                f"{p['compressed_kb']} KB, {p['ratio']}x, {p['error']:.2f}%",
            ),
        ]
        for stage, nbytes, err, published in stage_rows:
            errors = " / ".join(f"{e:.2f}%" for e in (err if isinstance(err, tuple) else (err,)))
            out.append(
                [r["model"], stage, f"{nbytes / KB:.1f} KB", f"{orig / nbytes:.1f}x", errors,
                 published]
            )  # fmt: skip
    return markdown_table(
        ["model", "stage", "size", "ratio", "test error", "published (Han et al. 2016)"], out
    )


def _layer_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        for layer, s in r["layers"].items():
            out.append(
                [
                    r["model"],
                    layer,
                    s["weights"],
                    f"{100 * s['kept_fraction']:.1f}%",
                    s["bits"],
                    f"{s['huffman_weight_bits']:.2f}",
                    s["index_bits"],
                    f"{s['huffman_index_bits']:.2f}",
                    f"{100 * s['padding'] / max(s['entries'], 1):.1f}%",
                    f"{s['huffman']}",
                ]
            )
    return markdown_table(
        [
            "model",
            "layer",
            "weights",
            "kept",
            "code bits",
            "after Huffman",
            "index bits",
            "after Huffman",
            "padding entries",
            "stored bytes",
        ],
        out,
    )


def part_deep(ctx: BenchContext) -> PartResult:
    rows, checks = [], []
    for name in ("lenet300", "lenet5"):
        row, c = _deep(name, ctx.quick, ctx.data)
        rows.append(row)
        checks += c
    md = (
        "### Deep Compression (Han, Mao, Dally, ICLR 2016), reproduced\n\n"
        "Pruning as in the pruning benchmark (Han et al. 2015, iterative, retrained), then "
        "k-means weight sharing per layer (linear centroid initialization, pruned zeros kept; "
        "LeNet-300: 6-bit codes, LeNet-5: 8-bit conv / 5-bit fc), centroids fine-tuned with the "
        "summed gradients of their weights (1-2 epochs), then Huffman coding of the codes and of "
        "the relative sparse indices (width per layer chosen for the smallest coded streams; the "
        "paper fixes 5 bits), codebooks and biases stored as float16. The last line is the size "
        "on disk of the saved `.mzip` file (one safetensors file: coded streams with their code "
        "tables, codebooks, biases, the JSON header), loaded back and evaluated. Sizes in kB of "
        "1000 bytes, as the paper. Pruned and quantized sizes are computed from the final "
        "model's masks and codes in the paper's fixed-width layout (relative indices plus "
        "float32 values, then plus fixed-width codes and the codebook), each with the index "
        "width that makes it smallest.\n\n"
        + _stage_table(rows)
        + "\n\nPer layer (Huffman bits are the average coded bits per relative-index entry):\n\n"
        + _layer_table(rows)
    )
    return PartResult(rows, checks, md)


PARTS = {"deep": part_deep, **MORE_PARTS}


def main(argv: list[str] | None = None) -> int:
    return run_parts(
        "joint", "Joint compression (`benchmarks/joint.py`)", PARTS, __doc__.splitlines()[0], argv,
        load_data=load_mnist,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
