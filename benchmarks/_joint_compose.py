"""Part ``composition`` of benchmarks/joint.py: recipes that compose methods on the same layers
(a later step compresses the parts of a layer an earlier one made: factors, compact-block convs,
kept weights), each beside its single methods, on the small VGG and ResNet.

Every recipe runs through ``modelzip.compress`` with the same short fine-tune; size and MACs are
the Report's, latency is the deployed model timed side by side with the dense one (``compress``'s
own measurement), accuracy is on the MNIST test set (the first 2,000 images with ``--quick``).
"""

from __future__ import annotations

from typing import Any

import torch
from _common import BenchContext, PartResult, check, markdown_table

import modelzip
from modelzip.recipe import Recipe

MODELS = ("vgg_small", "resnet_small")
SINGLE = {
    "tucker2": [{"method": "tucker2", "rank_fraction": 0.5}],
    "svd": [{"method": "svd", "rank_fraction": 0.5}],
    "depthwise_separable": [{"method": "depthwise_separable", "depth_multiplier": 1}],
    "channel_prune": [{"method": "channel_prune", "sparsity": 0.3}],
    "magnitude_prune": [{"method": "magnitude_prune", "sparsity": 0.7}],
    "quantize_weights": [{"method": "quantize_weights", "bits": 4}],
    "int8": [{"method": "int8"}],
}
COMPOSED = {
    "tucker2 + quantize_weights": ["tucker2", "quantize_weights"],
    "svd + magnitude_prune + quantize_weights": ["svd", "magnitude_prune", "quantize_weights"],
    "channel_prune + depthwise_separable + int8": ["channel_prune", "depthwise_separable", "int8"],
    "depthwise_separable + channel_prune + int8": ["depthwise_separable", "channel_prune", "int8"],
    "channel_prune + int8": ["channel_prune", "int8"],
    "magnitude_prune + quantize_weights": ["magnitude_prune", "quantize_weights"],
}


def _baseline(name: str, quick: bool) -> torch.nn.Module:
    """The zoo model trained briefly on MNIST (cached; threads=1 is part of the cache key)."""
    from modelzip.baselines import pretrained
    from modelzip.train import default_train_config

    config = default_train_config(name).replace(
        epochs=1, steps_per_epoch=150 if quick else None, threads=1
    )
    return pretrained(name, "mnist", config=config, progress=False).eval()


def _accuracy(model: torch.nn.Module, data: Any, limit: int | None) -> float:
    from modelzip.train import evaluate

    if limit is None:
        return float(evaluate(model, data, "test")["accuracy"])
    return float(evaluate(model, data, (data.x_test[:limit], data.y_test[:limit]))["accuracy"])


def _row(model_name: str, label: str, base: torch.nn.Module, recipe: list, ctx: BenchContext):
    print(f"[composition] {model_name}: {label}", flush=True)
    from modelzip.train import TrainConfig

    finetune = TrainConfig(
        epochs=1,
        lr=0.01,
        steps_per_epoch=20 if ctx.quick else 200,
        threads=1,
        val_size=500,
    )
    small, report = modelzip.compress(
        base, Recipe.from_list(recipe), ctx.data, finetune=finetune, evaluate=False
    )
    return {
        "model": model_name,
        "recipe": label,
        "steps": len(recipe),
        "size_bytes": report.after.size_bytes,
        "macs": report.after.macs,
        "dense_size_bytes": report.before.size_bytes,
        "dense_macs": report.before.macs,
        "latency_ms": report.after.latency_ms,
        "dense_latency_ms": report.before.latency_ms,
        "test_accuracy": _accuracy(small, ctx.data, 2000 if ctx.quick else None),
        "changed": sorted({c.method for c in report.layers}),
        "skipped": len(report.skipped),
    }


def part_composition(ctx: BenchContext) -> PartResult:
    rows, checks = [], []
    for name in MODELS:
        base = _baseline(name, ctx.quick)
        dense = _accuracy(base, ctx.data, 2000 if ctx.quick else None)
        for label, recipe in SINGLE.items():
            rows.append(_row(name, label, base, recipe, ctx))
        for label, parts in COMPOSED.items():
            recipe = [step for part in parts for step in SINGLE[part]]
            row = _row(name, label, base, recipe, ctx)
            row["dense_accuracy"] = dense
            rows.append(row)
            every = set(row["changed"]) == set(parts)
            checks.append(check(f"{name}: {label} applies every step", every, 1, "", every))
    table = [
        [
            r["model"],
            r["recipe"],
            f"{r['size_bytes'] / 1024:.1f} ({r['dense_size_bytes'] / r['size_bytes']:.1f}x)",
            f"{r['macs'] / 1e6:.2f} ({r['dense_macs'] / max(r['macs'], 1):.1f}x)",
            f"{r['latency_ms']:.2f} / {r['dense_latency_ms']:.2f}",
            f"{100 * r['test_accuracy']:.2f}",
        ]
        for r in rows
    ]
    md = (
        "### Composition: methods applied to the parts of compressed layers\n\n"
        "Each recipe on the small VGG and ResNet (trained one epoch on MNIST), through "
        "`modelzip.compress` with the same fine-tune (one epoch of "
        f"{20 if ctx.quick else 200} steps at lr 0.01), deployed. A later step compresses the "
        "parts an earlier one left (a Tucker-2 conv's three factor convs, a compact block's "
        "convs, a pruned layer's kept weights with its mask). Latency: deployed / dense, timed "
        "side by side on a batch of 64. Channel pruning traces through a depthwise-separable "
        "block (its pointwise convs' channels), so both orders of the three-step recipe run. "
        "One short fine-tune does not recover the three-step recipes' accuracy (the same "
        "fine-tune for every row, as compared here); a longer one is the user's call.\n\n"
        + markdown_table(["model", "recipe", "KiB", "MMACs", "ms", "test %"], table)
    )
    return PartResult(rows, checks, md)
