"""Estimate what a compressed model costs on modelled accelerators: cycles, energy, DRAM traffic.

    python examples/estimate_on_accelerator.py                    # LeNet-5 on MNIST, 4-bit weights
    python examples/estimate_on_accelerator.py --model small.mzip # any saved model
    python examples/estimate_on_accelerator.py --quick            # random LeNet-5, no data needed

The model is compressed (unless it is a saved, already compressed ``.mzip``), its layers are
read as workloads (MACs, bits, sparsity per layer), and :func:`modelzip.hardware.estimate` costs
them on each accelerator: a TPU-like weight-stationary array at 8 bits, Bit Fusion (which runs
4-bit weights faster) and Eyeriss (row stationary, normalized energy). The estimate of the first
accelerator (of the compressed model) is written to ``OUT/estimate.json`` for ``modelzip report``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: kinder on shared CPUs

import torch

import modelzip
from modelzip.hardware import estimate
from modelzip.core.counting import collect_workloads
from modelzip.core.atomic import write_json
from modelzip.models import create, model_info

ACCELERATORS = ("bitfusion", "tpu", "eyeriss")
RECIPE = [{"method": "quantize_weights", "bits": 4}]


def load(model: str, quick: bool) -> dict[str, torch.nn.Module]:
    """A saved model as it is, or a zoo model (trained baseline, or random with ``quick``) before
    and after the recipe."""
    if model.endswith(".mzip"):
        return {"saved": modelzip.load(model).eval()}
    if quick:
        torch.manual_seed(0)
        dense = create(model)
    else:
        from modelzip.baselines import pretrained

        dense = pretrained(model, model_info(model).dataset)
    sample = torch.rand(8, *model_info(model).input_shape)
    small, report = modelzip.compress(
        dense, modelzip.Recipe.from_list(RECIPE), sample=sample, evaluate=False, measure=False
    )
    print(f"{model}: {report.before.size_bytes:,} -> {report.after.size_bytes:,} bytes")
    return {"dense": dense.eval(), "4-bit": small.eval()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5", help="a zoo name or a saved .mzip")
    parser.add_argument("--input-shape", help="C,H,W for a .mzip outside the zoo")
    parser.add_argument("--quick", action="store_true", help="random weights, no training data")
    parser.add_argument("--out", type=Path, help="run folder for estimate.json (default: temp)")
    args = parser.parse_args(argv)

    models = load(args.model, args.quick)
    if args.input_shape:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    else:
        source = getattr(next(iter(models.values())), "_modelzip_source", None) or {}
        shape = model_info(source.get("name", args.model)).input_shape
    print(f"{'accelerator':12} {'model':6} {'cycles':>9} {'energy':>10}  unit        by level")
    first = None
    for name in ACCELERATORS:
        for label, model in models.items():
            workloads = collect_workloads(model, torch.rand(1, *shape))  # one inference
            est = estimate(workloads, name)
            if first is None and label != "dense":
                first = est
            levels = ", ".join(f"{k} {v / est.total_energy:.0%}" for k, v in est.energy.items())
            print(
                f"{name:12} {label:6} {est.cycles:>9,} {est.total_energy:>10.4g}"
                f"  {est.energy_unit:10}  {levels}"
            )
    out = args.out or Path(tempfile.mkdtemp(prefix="estimate-"))
    write_json(out / "estimate.json", first.to_dict())
    print(f"wrote {out / 'estimate.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
