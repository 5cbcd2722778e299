"""Part ``engines`` of ``benchmarks/hardware.py``: measured activations on the engines built for
them, and the TT engine (issue #22).

Rows, each with its check:

* dense vs ReLU-sparse activations on the zero-skipping presets (``cnvlutin`` skips zero
  activations' cycles, ``eyeriss-sparse`` gates them): the same VGG-small, its workloads without
  and with the activation statistics measured on one sample; cycles and energy must drop;
* 4-bit vs 8-bit activations (QAT with PACT inputs, bits measured from the layers) on ``stripes``,
  bit-serial in the activations: time must scale with the bits, within 10 % of the ideal 2x;
* SnaPEA-style in-place speculation and the decoupled predict-then-execute engine, fed by the
  low-precision before-calculation predictor's measured skip fraction: cheaper than the same array
  without the engine;
* a TT-compressed LeNet-300-100 on the TT engine (``tie``) against the same model on the same
  array without it.

Weights are untrained and the sample is random (the activation statistics of a trained model on
real data differ; what is measured is that they reach the engines and what they buy there).
"""

from __future__ import annotations

import dataclasses
from typing import Any


def engines() -> tuple[list, list, str]:
    import torch
    from _common import check, markdown_table

    import modelzip
    from modelzip.core.activation_stats import measured_workloads
    from modelzip.core.counting import collect_workloads
    from modelzip.hardware import SparseSupport, estimate, get_accelerator
    from modelzip.models import create
    from modelzip.prune.predict import attach_predictors
    from modelzip.recipe import Recipe

    rows: list[dict[str, Any]] = []
    checks, table = [], []

    def row(name: str, setting: str, base: Any, ours: Any, extra: str = "") -> tuple[float, float]:
        cycles, energy = ours.cycles / base.cycles, ours.total_energy / base.total_energy
        rows.append({"check": name, "setting": setting, "cycles_ratio": cycles,
                     "energy_ratio": energy, "cycles": ours.cycles, "base_cycles": base.cycles,
                     "energy": ours.total_energy, "base_energy": base.total_energy})  # fmt: skip
        table.append([name, setting, f"{cycles:.3f}", f"{energy:.3f}", extra])
        return cycles, energy

    torch.manual_seed(0)
    vgg, x = create("vgg_small").eval(), torch.rand(1, 1, 28, 28)
    blind, measured = collect_workloads(vgg, x), measured_workloads(vgg, x)
    relu = [w.act_sparsity for w in measured if w.act_sparsity > 0]
    mean_zero = sum(relu) / len(relu)
    for preset in ("cnvlutin", "eyeriss-sparse"):
        c, e = row(
            "relu_sparse_activations", preset, estimate(blind, preset), estimate(measured, preset),
            f"mean measured input zeros {mean_zero:.0%}",
        )  # fmt: skip
        checks.append(check(f"{preset}_energy_with_measured_relu_zeros", e, 1.0, "x dense", e < 1))
        if preset == "cnvlutin":  # gating (Eyeriss) saves energy only, by design
            checks.append(
                check("cnvlutin_cycles_with_measured_relu_zeros", c, 1.0, "x dense", c < 1)
            )

    times = {}
    for bits in (4, 8):
        q, _ = modelzip.compress(
            vgg, Recipe.from_list([{"method": "qat", "bits": 8, "act_bits": bits}]), sample=x,
            evaluate=False, measure=False, deploy=False,
        )  # fmt: skip
        ws = measured_workloads(q, x)
        assert {w.act_bits for w in ws} == {bits}
        times[bits] = estimate(ws, "stripes")
    ratio = times[8].cycles / times[4].cycles
    row("activation_bits", "stripes: 4-bit / 8-bit activations", times[8], times[4],
        f"8-bit / 4-bit time {ratio:.2f}x (ideal 2x)")  # fmt: skip
    checks.append(check("stripes_time_8bit_over_4bit_acts", ratio, 2.0, "x",
                        abs(ratio / 2.0 - 1) <= 0.10))  # fmt: skip

    torch.manual_seed(0)
    pred = create("vgg_small").eval()
    attach_predictors(pred, "low_precision", bits=4, margin=1.0)
    ws = measured_workloads(pred, x)
    skip = [w.predicted_skip for w in ws if w.predicted_skip > 0]
    for preset in ("snapea", "predict-execute"):
        spec = get_accelerator(preset)
        bare = estimate(ws, spec.replace(sparse=SparseSupport()))
        note = f"predictor skips {sum(skip) / len(skip):.0%} of outputs"
        c, e = row("output_speculation", preset, bare, estimate(ws, spec), note)
        checks.append(check(f"{preset}_cycles_with_predictor", c, 1.0, "x no engine", c < 1))

    torch.manual_seed(0)
    lenet = create("lenet300")
    x300 = torch.rand(1, 1, 28, 28)
    tt, _ = modelzip.compress(
        lenet, Recipe.from_list([{"method": "tt", "rank": 8}]), sample=x300, evaluate=False,
        measure=False, deploy=False,
    )  # fmt: skip
    ws = collect_workloads(tt, x300)
    tie = get_accelerator("tie")
    on, off = estimate(ws, tie), estimate(ws, dataclasses.replace(tie, tt_engine=False))
    dram = (on.dram_read_bytes + on.dram_write_bytes) / (off.dram_read_bytes + off.dram_write_bytes)
    c, e = row("tt_engine", "TT LeNet-300-100 on tie vs plain array", off, on,
               f"DRAM bytes x{dram:.2f}")  # fmt: skip
    rows[-1]["dram_ratio"] = dram
    checks.append(check("tt_engine_energy_vs_plain_array", e, 1.0, "x plain", e < 1))
    md = (
        "### 5. Measured activations, speculation and the TT engine\n\n"
        "Ratios are against the same model on the same array: without the measured activation "
        "statistics (rows 1-2), with 8-bit instead of 4-bit activations (row 3), without the "
        "output-sparsity engine (rows 4-5), without the TT engine (row 6). VGG-small and "
        "LeNet-300-100 are untrained and the sample random: what is measured is that the "
        "statistics reach the engines, not a trained model's sparsity. Stripes' tiles broadcast "
        "activations, so its folds are pipelined and the whole time scales with the bits (a "
        "systolic array's per-fold fill and drain would hold VGG-small's ratio near 1.7x).\n\n"
        + markdown_table(["row", "setting", "cycles ×", "energy ×", "note"], table)
        + "\n"
    )
    return checks, rows, md
