"""Find the smallest compressed model whose accuracy is within 0.5 points of the original.

    python examples/smallest_within_half_point.py               # about 35 recipes, minutes
    python examples/smallest_within_half_point.py --quick       # a handful, under half a minute
    python examples/smallest_within_half_point.py --executor ray

Three sweeps on LeNet-300-100 (MNIST) run on one pool of workers: k-bit weight quantization (the
grid of ``sweep_grid.yaml``), magnitude pruning at several sparsities, and pruning followed by
pruning-aware quantization (Deep Compression's pair), the last two fine-tuned briefly.
Every candidate is measured on the same fixed test subset; the answer is the smallest
``size_bytes`` among those no more than 0.5 points below the baseline. Each sweep's results stay
in ``OUT/<name>/sweep.sqlite`` and ``points.json`` (``modelzip report OUT/quantize`` plots them),
and a rerun resumes instead of starting over.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: kinder on shared CPUs

import json

from modelzip.sweep import SweepConfig, make_executor, run_sweep

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.005  # half a percentage point of accuracy


def sweeps(quick: bool) -> dict[str, SweepConfig]:
    """The quantization grid from sweep_grid.yaml and a pruning grid, smaller with ``quick``."""
    quantize = SweepConfig.load(HERE / "sweep_grid.yaml").to_dict()
    prune: dict = {
        "base": {**quantize["base"]},
        "recipe": [{"method": "magnitude_prune", "select": {"exclude": ["fc3"]}}],
        "grid": {"magnitude_prune.sparsity": [0.5, 0.7, 0.8, 0.9, 0.95, 0.97]},
    }
    # Deep Compression's combination: pruning, then levels fitted on the kept weights only.
    both: dict = {
        "base": {**quantize["base"]},
        "recipe": [
            {"method": "magnitude_prune", "select": {"exclude": ["fc3"]}},
            {"method": "sparse_quantize"},
        ],
        "grid": {"magnitude_prune.sparsity": [0.8, 0.9, 0.95], "sparse_quantize.bits": [3, 4, 5]},
    }
    if quick:
        for config in (quantize, prune, both):
            config["base"].update(eval_size=1000, accelerator=None)
        quantize["grid"] = {"quantize_weights.bits": [2, 4, 8]}
        prune["grid"] = {"magnitude_prune.sparsity": [0.5, 0.9]}
        both["grid"] = {"magnitude_prune.sparsity": [0.9], "sparse_quantize.bits": [4]}
    else:
        for config in (prune, both):
            config["base"]["finetune"] = {"epochs": 1, "lr": 1e-3, "optimizer": "adam"}
    return {
        name: SweepConfig.from_dict(config)
        for name, config in (("quantize", quantize), ("prune", prune), ("prune_quantize", both))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few recipes, no fine-tuning")
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("--workers", type=int, help="parallel workers (default: all CPUs)")
    parser.add_argument("--out", type=Path, help="run folder (default: a temp dir)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="smallest-"))
    workers = args.workers or (1 if args.quick else None)

    # One pool for both sweeps: workers load the model and data once and keep them.
    executor = make_executor(args.executor, workers)
    candidates, baseline = [], None
    try:
        for name, config in sweeps(args.quick).items():
            summary = run_sweep(config, out / name, executor=executor, progress=not args.quick)
            document = json.loads(Path(summary.points_path).read_text())
            baseline = document["baseline"]
            candidates += document["points"]
            print(f"{name}: {summary.done} of {summary.tasks} tasks done, in {out / name}")
    finally:
        executor.close()

    floor = baseline["accuracy"] - TOLERANCE
    print(f"baseline: accuracy {baseline['accuracy']:.4f}, {baseline['size_bytes']:,} bytes")
    good = [p for p in candidates if p["accuracy"] >= floor]
    if not good:
        print(f"no candidate within {TOLERANCE * 100:.1f} points of the baseline")
        return 1
    best = min(good, key=lambda p: (p["size_bytes"], -p["accuracy"]))
    ratio = baseline["size_bytes"] / best["size_bytes"]
    print(
        f"smallest within {TOLERANCE * 100:.1f} points: {best['name']}: accuracy "
        f"{best['accuracy']:.4f}, {best['size_bytes']:,} bytes ({ratio:.1f}x smaller)"
    )
    print("recipe:", json.dumps(best["recipe"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
