"""The transformers half of benchmarks/wild.py (#21): a small BERT built from a config (random
weights, nothing downloaded) on generated token data, compressed with int8 and with head pruning,
each against the dense model: size, MACs and latency side by side.

``bert_part(quick)`` returns a list of dicts, rows (``"kind": "row"``) and checks
(``"kind": "check"``: ``name``, ``value``, ``target``, ``unit``, ``passed``). Latency is the
median over interleaved repetitions of the dense and compressed models, each warmed up first
(:func:`modelzip.core.timing.time_interleaved`), in inference mode, one batch of token ids.

Standalone: ``python benchmarks/_wild_text.py --quick`` prints the list as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: BERT-mini (4 layers, width 256, 4 heads; Turc et al. 2019) with a 8k vocabulary, and a
#: 2-layer quick version.
FULL = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
        "intermediate_size": 1024, "vocab_size": 8000}  # fmt: skip
QUICK = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4,
         "intermediate_size": 512, "vocab_size": 2000}  # fmt: skip


def _check(name: str, value: float, target: float, unit: str, passed: bool) -> dict[str, Any]:
    return {"kind": "check", "name": name, "value": value, "target": target, "unit": unit,
            "passed": bool(passed)}  # fmt: skip


@contextlib.contextmanager
def _packages_first() -> Iterator[None]:
    """Import transformers' modules with this folder off ``sys.path``: benchmarks/kernels.py
    would shadow the ``kernels`` package that transformers imports."""
    here = Path(__file__).resolve().parent
    saved = list(sys.path)
    shadow = sys.modules.get("kernels")
    if shadow is not None and Path(getattr(shadow, "__file__", "") or "").parent == here:
        del sys.modules["kernels"]
    else:
        shadow = None
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        yield
    finally:
        sys.path[:] = saved
        if shadow is not None and "kernels" not in sys.modules:
            sys.modules["kernels"] = shadow


def bert_part(quick: bool) -> list[dict[str, Any]]:
    """Rows and checks for int8 and half-the-heads pruning of a small BERT (see module doc)."""
    with _packages_first():
        return _bert_part(quick)


def _bert_part(quick: bool) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    import modelzip
    from modelzip.api import model_stats
    from modelzip.core.timing import ratio, time_interleaved
    from modelzip.data import load_dataset
    from modelzip.models import build_hf
    from modelzip.prune.heads import HeadPruneConfig, attention_blocks

    sizes = QUICK if quick else FULL
    seq_len, batch = (64, 8) if quick else (128, 8)
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"],
              "max_position_embeddings": seq_len, **sizes}  # fmt: skip
    torch.manual_seed(0)
    dense = build_hf(config).eval()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.npy"
        np.save(path, rng.integers(0, sizes["vocab_size"], 40 * seq_len * batch))
        data = load_dataset(str(path))
    sample = data.test[: seq_len * batch].reshape(batch, seq_len)
    recipes = {
        "int8": [modelzip.Int8Config()],
        "head_prune_0.5": [HeadPruneConfig(sparsity=0.5)],
    }
    models, reports = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, recipe in recipes.items():
            models[name], reports[name] = modelzip.compress(
                dense, recipe, data, sample=sample, measure=False, evaluate=False
            )
    reps = 10 if quick else 30
    names = ["dense", *models]
    timings = dict(zip(
        names,
        time_interleaved([dense, *models.values()], sample, reps=reps, warmup=3,
                         min_seconds=0.5 if quick else 2.0, grad="inference"),
        strict=True,
    ))  # fmt: skip
    base = model_stats(dense, sample, measure=False)
    with torch.inference_mode():
        want = dense(sample)
    out: list[dict[str, Any]] = []
    for name in names:
        model = dense if name == "dense" else models[name]
        stats = model_stats(model, sample, measure=False)
        with torch.inference_mode():
            got = model(sample)
        out.append({
            "kind": "row",
            "model": f"bert-{sizes['num_hidden_layers']}x{sizes['hidden_size']}",
            "method": name,
            "params": stats.params,
            "size_bytes": stats.size_bytes,
            "size_ratio": base.size_bytes / stats.size_bytes,
            "macs": stats.macs,
            "mac_ratio": base.macs / stats.macs if stats.macs else None,
            "latency_ms": timings[name].ms,
            "latency_range_ms": [timings[name].min * 1e3, timings[name].max * 1e3],
            "speedup": ratio(timings["dense"], timings[name]),
            "samples": timings[name].samples,
            "output_shape": list(got.shape),
            "max_abs_diff": float((got - want).abs().max()),
            "layers_changed": len(reports[name].layers) if name in reports else 0,
            "batch": batch,
            "seq_len": seq_len,
        })  # fmt: skip
    rows = {r["method"]: r for r in out}
    int8, heads = rows["int8"], rows["head_prune_0.5"]
    n_linear = sum(1 for m in dense.modules() if isinstance(m, torch.nn.Linear))
    n_emb = sum(1 for m in dense.modules() if isinstance(m, torch.nn.Embedding))
    attn_before = sum(
        dense.get_submodule(n).weight.numel()
        for b in attention_blocks(dense)
        for n in [*(p for p, _ in b.inputs), b.output]
    )
    attn_after = sum(
        models["head_prune_0.5"].get_submodule(n).weight.numel()
        for b in attention_blocks(models["head_prune_0.5"])
        for n in [*(p for p, _ in b.inputs), b.output]
    )
    shape_kept = heads["output_shape"] == rows["dense"]["output_shape"]
    kept = attn_after / attn_before
    out += [
        _check(
            "int8: every Linear and Embedding compressed (the tied decoder with its embedding)",
            int8["layers_changed"],
            n_linear + n_emb,
            "layers",
            int8["layers_changed"] == n_linear + n_emb,
        ),
        _check("int8: size vs dense", int8["size_ratio"], 3.5, "x", int8["size_ratio"] >= 3.5),
        _check(
            "int8: speed vs dense (batch of token ids, warm)",
            int8["speedup"],
            1.0,
            "x",
            int8["speedup"] >= 1.0,
        ),
        _check("head_prune 0.5: attention weights kept", kept, 0.5, "of dense", kept == 0.5),
        _check("head_prune 0.5: output shape kept", float(shape_kept), 1.0, "bool", shape_kept),
        _check(
            "head_prune 0.5: MACs vs dense",
            heads["mac_ratio"] or 0.0,
            1.0,
            "x",
            (heads["mac_ratio"] or 0.0) > 1.0,
        ),
        _check(
            "head_prune 0.5: speed vs dense (warm)",
            heads["speedup"],
            1.0,
            "x",
            heads["speedup"] >= 1.0,
        ),
        _check(
            "no method leaves more parameters",
            max(r["params"] for r in out),
            rows["dense"]["params"],
            "params",
            all(r["params"] <= rows["dense"]["params"] for r in out),
        ),
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 2-layer model, fewer repeats")
    args = parser.parse_args(argv)
    json.dump(bert_part(args.quick), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
