"""Joint methods measured (parts of ``benchmarks/joint.py``): decomposition with pruning,
quantization with sparsity (the seed survey's Fig. 20, pruning-aware quantization,
quantization-aware pruning), and a compact model with the others.

Each part is ``part(ctx) -> PartResult`` (``benchmarks/_common.py``). Fine-tuning is one short
epoch at a tenth of the training learning rate; choices (the highest sparsity within a 0.5-point
drop) are made on the validation images that training holds out, and test accuracy is reported.
"""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

import torch
from _common import BenchContext, PartResult, check, markdown_table

import modelzip
from modelzip.core.counting import collect_workloads, count_params, module_bytes

MAX_DROP = 0.5  # points of accuracy
COMPACT = "mobilenet_mnist"


# ---------------------------------------------------------------- shared helpers
def _baseline(name: str) -> torch.nn.Module:
    """The cached trained zoo model; the compact one trains 2 epochs the first time (cached)."""
    from modelzip.baselines import pretrained
    from modelzip.train import default_train_config

    config = None
    if name == COMPACT:
        # threads=1 is part of the cache key: the same cached model whatever the runner's threads.
        config = default_train_config(name).replace(epochs=2, threads=1)
    return pretrained(name, "mnist", config=config, progress=False).eval()


def _finetune(
    model: torch.nn.Module, data: Any, quick: bool, callbacks=(), steps: int | None = None
) -> float:
    """One epoch (at most ``steps``; 100 when quick) at lr 0.01; returns validation accuracy."""
    from modelzip.train import TrainConfig, train

    config = TrainConfig(
        epochs=1,
        lr=0.01,
        schedule="cosine",
        steps_per_epoch=steps or (100 if quick else None),
        threads=torch.get_num_threads(),
    )
    result = train(model, data, config, progress=False, callbacks=callbacks)
    model.eval()
    return float(result.history[-1].val_accuracy)


def _acc(model: torch.nn.Module, data: Any, split: str = "test", limit: int | None = None) -> float:
    from modelzip.train import evaluate

    if limit is None:
        return float(evaluate(model, data, split)["accuracy"])
    x, y = (data.x_test, data.y_test) if split == "test" else (None, None)
    return float(evaluate(model, data, (x[:limit], y[:limit]))["accuracy"])


def _macs(model: torch.nn.Module, sample: torch.Tensor) -> tuple[int, int]:
    """(dense MACs, MACs with zero weights skipped) for ``sample`` of batch 1."""
    workloads = collect_workloads(model, sample)
    return sum(w.macs for w in workloads), sum(w.effective_macs for w in workloads)


def _compress(model: torch.nn.Module, recipe: Any) -> torch.nn.Module:
    small, _ = modelzip.compress(model, recipe, evaluate=False, measure=False)
    return small.eval()


def _weight_sparsity(model: torch.nn.Module) -> float:
    """Fraction of zero weights in the layers' weight tensors (dense forms of compressed ones)."""
    from modelzip.core.module import CompressedModule

    zeros = total = 0
    for m in model.modules():
        if isinstance(m, CompressedModule):
            w = m.to_dense().weight.detach()
        elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            w = m.weight.detach()
        else:
            continue
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


# ---------------------------------------------------------------- part: decomposition + pruning
def _highest_within(points: list[dict], base_val: float) -> dict | None:
    ok = [p for p in points if 100 * (base_val - p["val_accuracy"]) <= MAX_DROP]
    return max(ok, key=lambda p: p["sparsity"]) if ok else None


def _stored_zero_fraction(model: torch.nn.Module) -> float:
    """Zeros among the stored weight tensors (parameters with two or more dimensions: weights,
    or the factors of decomposed layers), masks applied."""
    zeros = total = 0
    for _, m in model.named_modules():
        for name, p in m.named_parameters(recurse=False):
            if p.dim() < 2:
                continue
            w = p.detach()
            if name == "weight" and hasattr(m, "mask"):
                w = w * m.mask
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(total, 1)


#: The hidden layers compared (99% of the weights); the classifier stays dense and unpruned in
#: every variant, so that the same layers are pruned or decomposed throughout.
HIDDEN = {"lenet300": ("fc1", "fc2"), "lenet5": ("conv2", "fc1")}


def _decompose_prune_model(name: str, quick: bool, data: Any) -> tuple[list[dict], dict]:
    from modelzip.core.selection import Select
    from modelzip.decompose.configs import SVDConfig
    from modelzip.joint.factor_prune import DecomposePruneConfig
    from modelzip.prune import MagnitudePruneConfig

    base = _baseline(name)
    sel = Select(names=HIDDEN[name])
    base_val, base_test = _acc(base, data, "val"), _acc(base, data)
    base_params = count_params(base)
    if quick:
        grid, steps = [0.5, 0.8, 0.9, 0.95], 100
    elif name == "lenet300":
        grid, steps = [0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98], None
    else:  # LeNet-5 trains 8x slower per step on a CPU: fewer points, 200 steps each
        grid, steps = [0.5, 0.7, 0.8, 0.9, 0.95], 200
    rows: list[dict] = []

    def record(order: str, model: torch.nn.Module, sparsity: float, val: float, t0: float) -> dict:
        row = {
            "model": name,
            "order": order,
            "sparsity": sparsity,
            "stored_zero_fraction": _stored_zero_fraction(model),
            "params": count_params(model),
            "params_ratio": count_params(model) / base_params,
            "size_bytes": module_bytes(model),
            "val_accuracy": val,
            "test_accuracy": _acc(model, data),
            "finetune_steps": steps,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        return row

    def run(order: str, start: torch.nn.Module, recipe: Any, sparsity: float) -> dict:
        t0 = time.perf_counter()
        model = _compress(start, recipe)
        return record(order, model, sparsity, _finetune(model, data, quick, steps=steps), t0)

    dense = [
        run("prune dense", base, MagnitudePruneConfig(sparsity=s, select=sel), s) for s in grid
    ]
    # Decompose first (truncated SVD at half the parameters), fine-tune, then prune the factors.
    t0 = time.perf_counter()
    decomposed = _compress(base, SVDConfig(rank_fraction=0.5, select=sel))
    dec_row = record(
        "SVD at half the parameters",
        decomposed,
        0.0,
        _finetune(decomposed, data, quick, steps=steps),
        t0,
    )
    factor_cfg = {"rank_fraction": None, "select": sel}
    factors = [
        run(
            "SVD, then prune factors", decomposed, DecomposePruneConfig(sparsity=s, **factor_cfg), s
        )
        for s in grid
    ]
    best_dense = _highest_within(dense, base_val)
    best_factor = _highest_within(factors, base_val)
    # The reverse order: decompose the best pruned model (its masked weights) by SVD.
    reverse = None
    if best_dense is not None:
        s = best_dense["sparsity"]
        pruned = _compress(base, MagnitudePruneConfig(sparsity=s, select=sel))
        _finetune(pruned, data, quick, steps=steps)
        reverse = run(
            "prune, then SVD",
            pruned,
            DecomposePruneConfig(sparsity=0.0, rank_fraction=0.5, select=sel),
            s,
        )
    summary = {
        "model": name,
        "baseline_val": base_val,
        "baseline_test": base_test,
        "baseline_params": base_params,
        "best_dense": best_dense,
        "best_factor": best_factor,
        "decomposed": dec_row,
        "reverse": reverse,
    }
    return rows, summary


def part_decompose_prune(ctx: BenchContext) -> PartResult:
    quick, data = ctx.quick, ctx.data
    names = ["lenet300"] if quick else ["lenet300", "lenet5"]
    rows: list[dict] = []
    checks: list[dict] = []
    summaries = []
    for name in names:
        model_rows, summary = _decompose_prune_model(name, quick, data)
        rows += model_rows
        summaries.append(summary)
        d, f = summary["best_dense"], summary["best_factor"]
        s_dense = d["sparsity"] if d else 0.0
        s_factor = f["sparsity"] if f else 0.0
        checks.append(
            check(
                f"{name}: highest sparsity within {MAX_DROP} pt, pruning the SVD factors "
                f"(target: below the dense model's {s_dense:.2f})",
                s_factor,
                s_dense,
                "fraction",
                s_factor < s_dense,
            )
        )
    table = []
    for r in rows:
        table.append(
            [
                r["model"],
                r["order"],
                _f(r["sparsity"]),
                _f(100 * r["stored_zero_fraction"], 1),
                f"{r['params']:,}",
                _f(1 / r["params_ratio"], 1) + "x",
                _f(100 * r["val_accuracy"]),
                _f(100 * r["test_accuracy"]),
            ]
        )
    lines = []
    for s in summaries:
        d, f, rev = s["best_dense"], s["best_factor"], s["reverse"]

        def desc(p: dict | None) -> str:
            if p is None:
                return "none of the grid"
            return (
                f"{100 * p['sparsity']:.0f}% ({p['params']:,} weights kept, "
                f"{100 * p['test_accuracy']:.2f}% test)"
            )

        line = (
            f"- **{s['model']}** (baseline {100 * s['baseline_test']:.2f}% test, "
            f"{s['baseline_params']:,} weights): highest sparsity within {MAX_DROP} points on the "
            f"validation images — dense model {desc(d)}, factors of the SVD model {desc(f)}."
        )
        if d is not None and f is not None:
            line += (
                f" The factors take less sparsity, but start from half the weights: the pruned "
                f"SVD model keeps {f['params'] / d['params']:.2f}x the weights of the pruned "
                f"dense one at the same accuracy budget."
            )
        if rev is not None:
            line += (
                f" Reverse order (prune {100 * rev['sparsity']:.0f}%, then SVD at half the "
                f"parameters): {rev['params']:,} weights, {100 * rev['test_accuracy']:.2f}% test; "
                f"the SVD factors of the pruned weights are "
                f"{100 * rev['stored_zero_fraction']:.1f}% zeros: the sparsity is lost."
            )
        lines.append(line)
    md = (
        "### Decomposition with pruning\n\n"
        "Magnitude pruning of the hidden layers (LeNet-300-100: fc1, fc2; LeNet-5: conv2, fc1; "
        "the classifier is left alone everywhere) against pruning the factors of their "
        "truncated-SVD form (`svd` at half the parameters, fine-tuned, then `decompose_prune`), "
        "and the reverse order (prune, then SVD of the pruned weights). Each point is one-shot "
        "magnitude pruning and one fine-tuning epoch at lr 0.01"
        + (" (100 steps: --quick)" if quick else " (LeNet-5: 200 steps)")
        + "; sparsity is over the pruned layers' weights (or factors), 'zeros' over all stored "
        "weight tensors. The survey (Deng et al. 2020, Sec. VI) states that pruning after "
        "decomposition reaches less sparsity than pruning the undecomposed model: the "
        "factors have less redundancy left to remove.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + markdown_table(
            [
                "model",
                "order",
                "sparsity",
                "zeros %",
                "weights kept",
                "fewer weights",
                "val %",
                "test %",
            ],
            table,
        )
    )
    return PartResult(rows, checks, md)


# ---------------------------------------------------------------- part: quantization + sparsity
def _all_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [
        m.weight.detach()
        for m in model.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]


def _zero_table(name: str) -> list[dict]:
    from modelzip.joint.sparse_quant import quantized_zero_fraction

    weights = _all_weights(_baseline(name))
    total = sum(w.numel() for w in weights)
    settings = [("uniform", b) for b in range(8, 1, -1)] + [("ternary", 2), ("binary", 1)]
    rows = []
    for scheme, bits in settings:
        zeros = sum(quantized_zero_fraction(w, scheme, bits) * w.numel() for w in weights)
        rows.append({"model": name, "scheme": scheme, "bits": bits, "zero_fraction": zeros / total})
    return rows


def _aware_rows(quick: bool, data: Any) -> tuple[list[dict], dict]:
    """LeNet-300 pruned to 90%: plain weight quantization of the pruned weights against
    pruning-aware quantization, and quantization-aware pruning against prune-then-quantize."""
    from modelzip.joint.quant_aware_prune import QuantAwarePruneConfig
    from modelzip.joint.sparse_quant import SparseQuantizeConfig
    from modelzip.prune import MagnitudePruneConfig
    from modelzip.prune.schedule import AGPCallback
    from modelzip.quantize import QuantizeWeightsConfig
    from modelzip.train import TrainConfig, count_steps

    sparsity = 0.9
    base = _baseline("lenet300")
    base_test = _acc(base, data)
    pruned = _compress(base, MagnitudePruneConfig(sparsity=sparsity))
    _finetune(pruned, data, quick)
    folded = copy.deepcopy(pruned)
    for name, m in list(folded.named_modules()):
        if hasattr(m, "mask"):
            folded.set_submodule(name, m.to_dense())
    rows = [
        {
            "case": "pruned 90%, float32",
            "weight_sparsity": _weight_sparsity(pruned),
            "size_bytes": module_bytes(pruned),
            "test_accuracy": _acc(pruned, data),
        }
    ]
    quantizers = [
        ("4-bit symmetric", {"bits": 4}),
        ("4-bit affine", {"bits": 4, "levels": "uniform-affine"}),
        ("3-bit k-means", {"bits": 3, "levels": "adaptive", "formulation": "optimized"}),
    ]
    for label, fields in quantizers:
        for kind, model in (
            ("plain quantize_weights", _compress(folded, QuantizeWeightsConfig(**fields))),
            ("pruning-aware sparse_quantize", _compress(pruned, SparseQuantizeConfig(**fields))),
        ):
            rows.append(
                {
                    "case": f"{label}, {kind}",
                    "weight_sparsity": _weight_sparsity(model),
                    "size_bytes": module_bytes(model),
                    "test_accuracy": _acc(model, data),
                }
            )
    # Quantization-aware pruning, the same training budget: one-shot to 90% then fine-tuned with
    # 4-bit fake-quantized weights, and gradual (AGP) pruning inside the fine-tuning epoch.
    post = _compress(pruned, SparseQuantizeConfig(bits=4))
    rows.append(
        {
            "case": "prune 90% + fine-tune, then 4-bit pruning-aware quantization",
            "weight_sparsity": _weight_sparsity(post),
            "size_bytes": module_bytes(post),
            "test_accuracy": _acc(post, data),
        }
    )
    one_shot = _compress(base, QuantAwarePruneConfig(sparsity=sparsity, bits=4))
    _finetune(one_shot, data, quick)
    gradual = _compress(base, QuantAwarePruneConfig(sparsity=0.0, bits=4))
    steps = count_steps(data, TrainConfig(epochs=1, steps_per_epoch=100 if quick else None))
    agp = AGPCallback(sparsity, begin_step=0, end_step=int(0.7 * steps), frequency=10)
    _finetune(gradual, data, quick, callbacks=[agp])
    for label, model in (
        ("quantization-aware pruning 90% one-shot (4-bit fake quant in fine-tuning)", one_shot),
        ("quantization-aware pruning, AGP to 90% in the fine-tuning epoch", gradual),
    ):
        stored = _compress(model, SparseQuantizeConfig(bits=4))
        rows.append(
            {
                "case": label + ", stored 4-bit",
                "weight_sparsity": _weight_sparsity(stored),
                "size_bytes": module_bytes(stored),
                "test_accuracy": _acc(stored, data),
            }
        )
    summary = {
        "baseline_test": base_test,
        "pruned_sparsity": _weight_sparsity(pruned),
        "post_test": rows[-3]["test_accuracy"],
        "qap_test": rows[-2]["test_accuracy"],
        "agp_test": rows[-1]["test_accuracy"],
    }
    return rows, summary


def part_quant_sparsity(ctx: BenchContext) -> PartResult:
    quick, data = ctx.quick, ctx.data
    zero_rows = _zero_table("lenet300") + _zero_table("lenet5")
    checks = []
    for name in ("lenet300", "lenet5"):
        fr = [
            r["zero_fraction"] for r in zero_rows if r["model"] == name and r["scheme"] == "uniform"
        ]
        steps = [b - a for a, b in itertools.pairwise(fr)]
        checks.append(
            check(
                f"{name}: zero fraction rises at every bit removed (8 -> 2), smallest step",
                min(steps),
                0.0,
                "fraction",
                min(steps) > 0,
            )
        )
    aware_rows, summary = _aware_rows(quick, data)
    by = {r["case"]: r for r in aware_rows}
    kept = [
        by[f"{q}, pruning-aware sparse_quantize"]["weight_sparsity"]
        for q in ("4-bit symmetric", "4-bit affine", "3-bit k-means")
    ]
    lowest = min(kept)
    checks.append(
        check(
            "lenet300 90% pruned: lowest sparsity after pruning-aware quantization",
            lowest,
            summary["pruned_sparsity"],
            "fraction",
            lowest >= summary["pruned_sparsity"],
        )
    )
    gain = 100 * (summary["qap_test"] - summary["post_test"])
    checks.append(
        check(
            "lenet300 90% / 4 bit: quantization-aware pruning minus prune-then-quantize (test)",
            gain,
            0.0,
            "points",
            gain >= 0.0,
        )
    )
    models = ("lenet300", "lenet5")
    settings = [(r["scheme"], r["bits"]) for r in zero_rows if r["model"] == "lenet300"]
    zero_table = [
        [
            f"{s} {b}-bit" if s == "uniform" else s,
            *[
                _f(
                    100
                    * next(
                        r["zero_fraction"]
                        for r in zero_rows
                        if r["model"] == m and (r["scheme"], r["bits"]) == (s, b)
                    ),
                    1,
                )
                for m in models
            ],
        ]
        for s, b in settings
    ]
    aware_table = [
        [
            r["case"],
            _f(100 * r["weight_sparsity"], 2),
            f"{r['size_bytes'] / 1024:.1f}",
            _f(100 * r["test_accuracy"]),
        ]
        for r in aware_rows
    ]
    md = (
        "### Quantization with sparsity\n\n"
        "**Low-bit quantization makes weights zero** (the seed survey's Fig. 20): the fraction of "
        "exactly-zero weights of the trained models after symmetric per-channel quantization "
        "(levels `Δ·k`, `Δ = max|w|/(2^(b-1)-1)`; a weight is zero when `|w| ≤ Δ/2`), TWN "
        "ternary (`|w| ≤ 0.7·E|w|`) and binary weights (no zero level).\n\n"
        + markdown_table(["quantizer", "LeNet-300-100 zeros %", "LeNet-5 zeros %"], zero_table)
        + "\n\n**Pruning-aware quantization** keeps sparsity: LeNet-300-100 pruned to 90% "
        "(fine-tuned), then quantized as plain weights (masks folded into the weights; "
        "`quantize_weights`) or with the quantizer fitted on the kept weights and the mask kept "
        "(`sparse_quantize`: one mask bit per weight plus codes of the kept ones). Affine levels "
        "need not contain zero, so the plain quantizer turns pruned weights nonzero; the "
        "pruning-aware one never does. Last three rows: quantizing after pruning and fine-tuning, "
        "against quantization-aware pruning (`quant_aware_prune`: the fine-tuning epoch sees "
        "4-bit weights), one-shot or gradual (AGP), all stored by `sparse_quantize`. Baseline "
        f"{100 * summary['baseline_test']:.2f}%.\n\n"
        + markdown_table(["case", "zero weights %", "KiB", "test %"], aware_table)
    )
    return PartResult(zero_rows + aware_rows, checks, md)


# ---------------------------------------------------------------- part: compact + others
def _stage(label: str, model: torch.nn.Module, data: Any, sample: torch.Tensor, limit) -> dict:
    macs, eff = _macs(model, sample)
    return {
        "stage": label,
        "size_bytes": module_bytes(model),
        "params": count_params(model),
        "macs": macs,
        "effective_macs": eff,
        "test_accuracy": _acc(model, data, limit=limit),
    }


def part_compact_joint(ctx: BenchContext) -> PartResult:
    from modelzip.core.selection import Select
    from modelzip.decompose.configs import SVDConfig
    from modelzip.joint.factor_prune import DecomposePruneConfig
    from modelzip.joint.sparse_quant import SparseQuantizeConfig
    from modelzip.prune import MagnitudePruneConfig

    quick, data = ctx.quick, ctx.data
    sample = data.x_test[:1]
    limit = 2000 if quick else None
    rows = [_stage(n, _baseline(n), data, sample, limit) for n in ("lenet5", "vgg_small")]
    compact = _baseline(COMPACT)
    stages = [_stage(f"{COMPACT}", compact, data, sample, limit)]
    # Pruning: the 1x1 convs and the classifier; the stem and the depthwise kernels (9 weights
    # per channel, 4% of the weights) are left dense.
    prune_sel = Select(exclude=(r"stem\..*", r"block1\.0\.0", r"block\d+\.body\.3"))
    pruned = _compress(compact, MagnitudePruneConfig(sparsity=0.5, select=prune_sel))
    _finetune(pruned, data, quick)
    stages.append(_stage("+ pruning 50% (fine-tuned)", pruned, data, sample, limit))
    quant = _compress(pruned, SparseQuantizeConfig(bits=8))
    stages.append(_stage("+ 8-bit pruning-aware quantization", quant, data, sample, limit))
    quant4 = _compress(pruned, SparseQuantizeConfig(bits=4))
    stages.append(_stage("+ 4-bit pruning-aware quantization", quant4, data, sample, limit))
    # Decomposition branch: SVD of the 1x1 convs (the stem, depthwise kernels and classifier
    # are too small to gain), then pruning of the factors.
    pointwise = Select(names=(r"block1\.1\.0", r"block\d+\.body\.[06]"))
    dec = _compress(compact, SVDConfig(rank_fraction=0.75, select=pointwise))
    _finetune(dec, data, quick)
    stages.append(
        _stage("+ SVD of 1x1 convs, 75% of their weights (fine-tuned)", dec, data, sample, limit)
    )
    dec_pruned = _compress(dec, DecomposePruneConfig(sparsity=0.3, rank_fraction=None))
    _finetune(dec_pruned, data, quick)
    stages.append(
        _stage("+ SVD + factor pruning 30% (fine-tuned)", dec_pruned, data, sample, limit)
    )
    base_acc = stages[0]["test_accuracy"]
    for s in stages:
        s["drop_points"] = 100 * (base_acc - s["test_accuracy"])
    ok = [s for s in stages[1:] if s["drop_points"] <= MAX_DROP]
    best = min(ok, key=lambda s: s["size_bytes"]) if ok else None
    ratio = stages[0]["size_bytes"] / best["size_bytes"] if best else 1.0
    checks = [
        check(
            f"{COMPACT}: smaller with joint methods within {MAX_DROP} pt (size ratio)",
            ratio,
            1.0,
            "x",
            ratio > 1.0,
        )
    ]
    table = [
        [
            r["stage"],
            f"{r['size_bytes'] / 1024:.1f}",
            f"{r['params']:,}",
            f"{r['macs'] / 1e6:.2f}",
            f"{r['effective_macs'] / 1e6:.2f}",
            _f(100 * r["test_accuracy"]),
        ]
        for r in rows + stages
    ]
    md = (
        "### Compact model with the others\n\n"
        f"`{COMPACT}` (trained 2 epochs) compressed further, each stage from the one above "
        "(the 4-bit row from the pruned model; the SVD branch from the compact model), "
        "fine-tuned one epoch at lr 0.01 where marked"
        + (", accuracy on 2,000 test images (--quick)" if quick else "")
        + "; LeNet-5 and the small VGG for scale. Effective MACs skip zero weights. "
        + (
            f"Smallest within {MAX_DROP} points: {best['stage']} "
            f"({ratio:.1f}x smaller than the compact model)."
            if best
            else f"No stage stayed within {MAX_DROP} points."
        )
        + "\n\n"
        + markdown_table(
            ["model / stage", "KiB", "params", "MMACs", "effective MMACs", "test %"], table
        )
    )
    return PartResult(rows + stages, checks, md)
