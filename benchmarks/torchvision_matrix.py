"""Every torchvision classification constructor x {magnitude_prune, channel_prune, int8, svd,
save->load, ONNX export}, on random weights; writes docs/models.md (the table as generated).

    python benchmarks/torchvision_matrix.py                  # every model (hours on 2 cores)
    python benchmarks/torchvision_matrix.py --models resnet18,convnext_tiny --no-docs
    python benchmarks/torchvision_matrix.py --max-params 30e6  # the rest listed as not run

Each model runs in its own process (the big ones need GBs). A cell is ``pass``, ``refused``
(a documented refusal: the method leaves the model alone and the Report says why) or ``FAIL``.
Channel pruning passes when it removes >= 30 % of the parameters at sparsity 0.5; a model without
prunable groups is a refusal with the Report's reason. ``tests/test_torchvision.py`` runs the
same cells (:func:`run_model`) on a subset in the fast lane and on every model in the slow lane.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CELLS = ("magnitude_prune", "channel_prune", "int8", "svd", "save_load", "onnx")
#: Parameters (millions) above which a model is in the slow lane only.
SLOW_LANE_MPARAMS = 100.0
#: Least fraction of parameters channel pruning at 0.5 must remove from a model with groups.
MIN_CHANNEL_REMOVAL = 0.30


def input_size(name: str) -> int:
    """The smallest input each family accepts at this cost (ViT and MaxViT are built for 224)."""
    if name.startswith(("vit_", "maxvit")):
        return 224
    if name.startswith("inception"):
        return 96
    return 64


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_inputs_match(model: Any, sample: Any) -> list[str]:
    """Layers whose declared input channels differ from what their producers give them."""
    import torch
    from torch import nn

    bad: list[str] = []

    def hook(name: str) -> Any:
        def check(m: nn.Module, inp: tuple, _out: Any) -> None:
            x = inp[0]
            if isinstance(m, nn.Conv2d) and x.shape[1] != m.in_channels:
                bad.append(f"{name}: {m.in_channels} != {x.shape[1]}")
            if isinstance(m, nn.Linear) and x.shape[-1] != m.in_features:
                bad.append(f"{name}: {m.in_features} != {x.shape[-1]}")

        return check

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.eval()(sample)
    finally:
        for h in handles:
            h.remove()
    return bad


def _skips(report: Any) -> str:
    reasons: dict[str, int] = {}
    for s in report.skipped:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:2]
    return "; ".join(f"{n}x {r[:90]}" for r, n in top)


def run_model(name: str, cells: tuple[str, ...] = CELLS) -> dict[str, Any]:
    """Every cell for one constructor: ``{"model", "mparams", "size", cell: {status, detail}}``."""
    import torch

    import modelzip
    from modelzip.decompose import SVDConfig
    from modelzip.export import export_onnx
    from modelzip.models.torchvision_compat import import_torchvision
    from modelzip.prune import MagnitudePruneConfig
    from modelzip.prune.channels import ChannelPruneConfig
    from modelzip.quantize import Int8Config

    tv = import_torchvision()
    torch.manual_seed(0)
    model = tv.models.get_model(name, weights=None).eval()
    size = input_size(name)
    sample = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(sample)
    row: dict[str, Any] = {"model": name, "mparams": _params(model) / 1e6, "size": size}
    pruned = None

    def cell(key: str, fn: Any) -> None:
        if key not in cells:
            return
        t0 = time.perf_counter()
        try:
            status, detail = fn()
        except Exception as e:  # a crash is a failed cell, reported, not a stopped matrix
            status, detail = "FAIL", f"{type(e).__name__}: {str(e)[:200]}"
        row[key] = {"status": status, "detail": detail, "seconds": time.perf_counter() - t0}

    def compressed(config: Any) -> tuple[Any, Any]:
        small, report = modelzip.compress(model, [config], sample=sample, measure=False,
                                          deploy=False)  # fmt: skip
        with torch.no_grad():
            out = small(sample)
        if out.shape != ref.shape or not torch.isfinite(out).all():
            raise AssertionError(f"output {tuple(out.shape)} vs {tuple(ref.shape)} or not finite")
        return small, report

    def layer_cell(config: Any) -> Any:
        def run() -> tuple[str, str]:
            _, report = compressed(config)
            n = len(report.layers)
            if n == 0:
                return "refused", f"no layer changed: {_skips(report)}"
            skipped = f"; left {len(report.skipped)}: {_skips(report)}" if report.skipped else ""
            return "pass", f"{n} layers{skipped}"

        return run

    def channel() -> tuple[str, str]:
        nonlocal pruned
        small, report = compressed(ChannelPruneConfig(sparsity=0.5))
        bad = conv_inputs_match(small, sample)
        if bad:
            raise AssertionError(f"graph check failed: {bad[:3]}")
        removed = 1 - _params(small) / _params(model)
        pruned = small
        if not report.layers:
            return "refused", f"no prunable group: {_skips(report)}"
        status = "pass" if removed >= MIN_CHANNEL_REMOVAL else "FAIL"
        return status, f"-{removed:.0%} params; left {len(report.skipped)}: {_skips(report)}"

    def save_load() -> tuple[str, str]:
        notes = []
        for label, m in (("dense", model), ("channel-pruned", pruned)):
            if m is None:
                continue
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "m.mzip"
                modelzip.save(m, path)  # no source given: inferred for torchvision
                back = modelzip.load(path)  # no trust: an allow-listed constructor
            with torch.no_grad():
                same = torch.equal(m.eval()(sample), back(sample))
            if not same:
                raise AssertionError(f"{label} model does not load bit-exact")
            notes.append(label)
        return "pass", "bit-exact: " + ", ".join(notes)

    def onnx() -> tuple[str, str]:
        target = pruned if pruned is not None else model
        with tempfile.TemporaryDirectory() as d:
            res = export_onnx(target, Path(d) / "m.onnx", sample)
        err = res.max_abs_error
        if err is None or not math.isfinite(err) or err > 1e-3 * (1 + float(ref.abs().max())):
            return "FAIL", f"onnxruntime differs by {err}"
        which = "channel-pruned" if pruned is not None else "dense"
        return "pass", f"{which}, max |diff| {err:.1e}"

    cell("magnitude_prune", layer_cell(MagnitudePruneConfig(sparsity=0.5)))
    cell("channel_prune", channel)
    cell("int8", layer_cell(Int8Config()))
    cell("svd", layer_cell(SVDConfig()))
    cell("save_load", save_load)
    cell("onnx", onnx)
    return row


def _worker(name: str, cells: tuple[str, ...], queue: Any) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        queue.put(run_model(name, cells))
    except Exception as e:
        queue.put({"model": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})


def run_isolated(name: str, cells: tuple[str, ...], timeout: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(name, cells, queue))
    proc.start()
    try:
        row = queue.get(timeout=timeout)
    except Exception:
        row = {"model": name, "error": f"did not finish in {timeout:.0f} s (or ran out of memory)"}
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    return row


def _mparams(name: str) -> float:
    import torch

    from modelzip.models.registry import build_structure
    from modelzip.models.torchvision_compat import import_torchvision

    tv = import_torchvision()
    with torch.no_grad():
        m = build_structure(tv.models.get_model_builder(name))
    return sum(p.numel() for p in m.parameters()) / 1e6


USAGE = """\
## What you need

torchvision's model definitions, in the release that matches your torch (0.28 for torch 2.13):

    pip install --no-deps "torchvision==0.28.*"

`--no-deps` keeps the torch you have (PyPI's torchvision asks for PyPI's CUDA torch). With another
torch build (the CPU wheel) torchvision's compiled ops do not load, and a plain
`import torchvision` fails (`operator torchvision::nms does not exist`); modelzip imports it
through `modelzip.models.torchvision_compat.import_torchvision`, which declares the two op
schemas torchvision's import needs, so the model definitions work (detection's NMS itself still
needs a matching build). `make setup` installs it so; `make test` runs the fast lane of
`tests/test_torchvision.py`, `make test-slow` every model below.

    modelzip compress torchvision.models:resnet18 --dataset photos/ --image-size 224 \\
        --recipe recipe.yaml --out small.mzip --finetune-epochs 1
    modelzip inspect torchvision.models:convnext_tiny        # 3x224x224 unless --input-shape
    modelzip export small.mzip --format onnx --out small.onnx --input-shape 3,224,224

`--dataset DIR` is a folder of class subfolders (or `train/` and `val/` of them), decoded batch by
batch with Pillow: shorter side resized to `image-size / 0.875`, center crop, ImageNet mean/std.

A model built by `torchvision.models.resnet18()` itself saves without a `source`: compress and
save record the constructor whose model has the same tensors (`modelzip.models.infer_source`,
`num_classes` included). Loading calls it without `--trust-remote-code` because torchvision's
model builders are on the allow-list of installed packages
(`modelzip.models.registry.register_package_constructors`); a file may name no other torchvision
function, and never `weights` (nothing downloads).

Channel pruning follows residual adds, concatenations, squeeze-excitation scales, channels-last
linears and LayerNorms with their layer scales (ConvNeXt, the MLPs of Swin and ViT), and keeps a
submodule torch.fx cannot trace opaque. A layer that is not pruned (it feeds the classifier's
output, an attention function, a grouped conv, a channel shuffle, ...) is in the Report with the
reason. A layer whose weight the model's code reads itself (Swin's attention calls
`F.linear(x, self.qkv.weight)`) is left alone by every method that would take that tensor away,
with the reason in the Report.

## The matrix
"""


def markdown(rows: list[dict[str, Any]], skipped: dict[str, float], meta: dict[str, Any]) -> str:
    lines = [
        "# Models from the wild: torchvision's classification zoo",
        "",
        USAGE,
        "Generated by `python benchmarks/torchvision_matrix.py` (do not edit by hand); "
        f"torchvision {meta['torchvision']}, torch {meta['torch']}, {meta['date']}, "
        f"{meta['machine']}. Random weights, batch 2; inputs 64x64 (Inception 96, ViT and MaxViT "
        "224). `compress(..., deploy=False)`. A cell is **pass**, **refused** (the method left "
        "the model alone and the Report says why, quoted) or **FAIL**. Channel pruning is at "
        f"sparsity 0.5 and passes when it removes >= {MIN_CHANNEL_REMOVAL:.0%} of the parameters "
        "(every conv's input channels then checked against its producers'); save->load is "
        "bit-exact, with no `source` given and no `trust_remote_code`; ONNX runs the "
        "channel-pruned model in onnxruntime.",
        "",
        "| model | M params | " + " | ".join(CELLS) + " |",
        "|---|---:|" + "---|" * len(CELLS),
    ]
    counts = {c: {"pass": 0, "refused": 0, "FAIL": 0} for c in CELLS}
    notes = []
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | | " + " | ".join(["FAIL"] * len(CELLS)) + " |")
            notes.append(f"- **{row['model']}**: {row['error']}")
            for c in CELLS:
                counts[c]["FAIL"] += 1
            continue
        cells = []
        for c in CELLS:
            entry = row.get(c)
            if entry is None:
                cells.append("")
                continue
            counts[c][entry["status"]] += 1
            short = entry["detail"].split(";")[0] if c == "channel_prune" else ""
            cells.append(f"{entry['status']} {short}".strip())
            if entry["status"] != "pass":
                notes.append(f"- **{row['model']}** {c}: {entry['detail']}")
        lines.append(f"| {row['model']} | {row['mparams']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Totals: " + "; ".join(
        f"{c} {v['pass']} pass / {v['refused']} refused / {v['FAIL']} fail"
        for c, v in counts.items()
    ) + "."]  # fmt: skip
    if skipped:
        lines += [
            "",
            "Not run in this generation (left out by `--max-params` for time on this machine; "
            f"over {SLOW_LANE_MPARAMS:.0f} M parameters they are slow-lane only; "
            "`make test-slow` runs every one): "
            + ", ".join(f"{n} ({p:.0f} M)" for n, p in sorted(skipped.items())),
        ]
    if notes:
        lines += ["", "## Refusals and failures, with the reason", "", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated constructors (default: every one)")
    ap.add_argument("--max-params", type=float, default=math.inf, help="skip larger models")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per model")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/torchvision_matrix.json"))
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/models.md")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --json")
    ap.add_argument("--rerun", action="store_true", help="with --resume: run --models again")
    ap.add_argument("--docs-only", action="store_true", help="docs/models.md from --json")
    args = ap.parse_args(argv)
    import torch

    from modelzip.models.torchvision_compat import classification_models, import_torchvision

    if args.docs_only:
        record = json.loads(Path(args.json).read_text())
        text = markdown(record["rows"], record["skipped"], record["meta"])
        (ROOT / "docs/models.md").write_text(text)
        return 0
    names = args.models.split(",") if args.models else classification_models()
    sizes = {n: _mparams(n) for n in names}
    run = [n for n in names if sizes[n] * 1e6 <= args.max_params]
    meta = {
        "torchvision": import_torchvision().__version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
    }
    path = Path(args.json)
    done: dict[str, dict[str, Any]] = {}
    if args.resume and path.is_file():
        done = {r["model"]: r for r in json.loads(path.read_text())["rows"]}
    everything = classification_models() if args.models else names
    for n in sorted(run, key=lambda n: sizes[n]):
        if n in done and not args.rerun:
            continue
        t0 = time.perf_counter()
        row = run_isolated(n, CELLS, args.timeout)
        done[n] = row
        status = row.get("error") or " ".join(f"{c}={row[c]['status']}" for c in CELLS if c in row)
        print(f"{n:24s} {time.perf_counter() - t0:6.0f}s {status}", flush=True)
        # Written after every model: an interrupted run keeps what it measured (--resume).
        rows = sorted(done.values(), key=lambda r: r["model"])
        missing = [m for m in everything if m not in done]
        skipped = {m: sizes[m] if m in sizes else _mparams(m) for m in missing}
        sizes.update(skipped)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "rows": rows, "skipped": skipped}, indent=1))
        if not args.no_docs:
            (ROOT / "docs/models.md").write_text(markdown(rows, skipped, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
