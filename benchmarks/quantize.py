"""Data quantization on MNIST: int8 PTQ speed, low-bit weights, training signals, TWN, DDP.

    python benchmarks/quantize.py            # everything (about 40 min on 2 shared cores)
    python benchmarks/quantize.py --quick    # shorter training everywhere (< 5 min after caches)
    python benchmarks/quantize.py --parts int8,weights

Parts: ``int8`` (static int8 PTQ of LeNet-5 and the small VGG: accuracy and latency against fp32
and PyTorch's ``quantize_dynamic``), ``weights`` (4- and 2-bit weights: levels x formulation x
rounding), ``influence`` (one data object quantized at a time during training), ``twn`` (the
MNIST table of Li & Liu 2016), ``ddp`` (quantized gradients on two local processes).
Writes ``benchmarks/results/quantize.json`` and the ``quantize`` section of BENCHMARKS.md
(``--quick`` writes ``quantize-quick.json`` and leaves BENCHMARKS.md alone); the parts not run
keep their last results (``--no-keep`` drops them).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import sys
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
from torch import nn

import modelzip
from modelzip.baselines import baseline_path, pretrained
from modelzip.core.counting import module_bytes
from modelzip.core.timing import time_named
from modelzip.data import load_dataset
from modelzip.models import create
from modelzip.quantize import (
    BinaryConfig,
    Int8Config,
    MultibitConfig,
    QATConfig,
    QuantizeWeightsConfig,
    TernaryConfig,
    fold_bn,
)
from modelzip.quantize.training import OBJECTS, QuantizedTraining, TrainingQuantConfig, wage
from modelzip.train import TrainConfig, default_train_config, evaluate, train


def _acc(model: nn.Module, data: Any, limit: int | None = None) -> float:
    """Test accuracy in percent (on the first ``limit`` test images when given)."""
    split: Any = "test" if limit is None else (data.x_test[:limit], data.y_test[:limit])
    return round(100 * float(evaluate(model, data, split)["accuracy"]), 2)


def _latency_ms(models: dict[str, nn.Module], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Best-of-rounds mean latency (ms) per model over 10 calls, measured interleaved (fair under
    shared CPUs), after 3 warm-up calls."""
    timings = time_named(models, x, reps=rounds, warmup=3, number=10, grad="inference")
    return {k: round(t.min * 1e3, 3) for k, t in timings.items()}


def _trained(name: str, quick: bool) -> tuple[nn.Module, str]:
    """The cached zoo baseline, else one epoch of its recipe (training VGG's three epochs
    costs more than the rest of this benchmark on a shared 2-core machine)."""
    if baseline_path(name, "mnist").is_file():
        return pretrained(name, "mnist", progress=False).eval(), "zoo baseline"
    config = default_train_config(name).replace(epochs=1, threads=1)
    torch.manual_seed(0)
    model = create(name)
    train(model, load_dataset("mnist"), config, progress=False)
    return model.eval(), "1 epoch (no cached baseline)"


def part_int8(ctx: BenchContext) -> PartResult:
    data, quick = ctx.data, ctx.quick
    rows, checks = [], []
    x = data.x_test[:64]
    for name in ("lenet5", "vgg_small"):
        fp32, note = _trained(name, quick)
        folded = copy.deepcopy(fp32)
        folded_pairs = fold_bn(folded)
        int8, _ = modelzip.compress(
            folded, Int8Config(activations="static"), data, evaluate=False, measure=False
        )
        anchor = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear})
        lat = _latency_ms({"fp32": fp32, "int8": int8, "anchor": anchor}, x, 5 if quick else 15)
        a_fp, a_q, a_anchor = _acc(fp32, data), _acc(int8, data), _acc(anchor, data)
        rows.append(
            {
                "part": "int8",
                "model": name,
                "fp32_acc": a_fp,
                "int8_acc": a_q,
                "dynamic_anchor_acc": a_anchor,
                "bn_folded": len(folded_pairs),
                "fp32_ms": lat["fp32"],
                "int8_ms": lat["int8"],
                "anchor_ms": lat["anchor"],
                "speedup": round(lat["fp32"] / lat["int8"], 2),
                "anchor_speedup": round(lat["fp32"] / lat["anchor"], 2),
                "trained": note,
                "fp32_bytes": module_bytes(fp32),
                "int8_bytes": module_bytes(int8),
            }
        )
        drop = round(a_fp - a_q, 2)
        checks.append(check(f"{name} static int8 accuracy drop", drop, 0.1, "points", drop <= 0.1))
        sp = rows[-1]["speedup"]
        checks.append(check(f"{name} static int8 speed-up at batch 64", sp, 2.0, "x", sp >= 2.0))
    table = markdown_table(
        [
            "model",
            "fp32 acc",
            "int8 acc",
            "fp32 ms",
            "int8 ms (ours)",
            "speed-up",
            "quantize_dynamic ms",
            "its speed-up",
            "its acc",
            "trained",
        ],
        [
            [
                r["model"],
                r["fp32_acc"],
                r["int8_acc"],
                r["fp32_ms"],
                r["int8_ms"],
                r["speedup"],
                r["anchor_ms"],
                r["anchor_speedup"],
                r["dynamic_anchor_acc"],
                r["trained"],
            ]
            for r in rows
        ],
    )
    md = (
        "### Post-training static int8 (batch 64, 1 thread)\n\n"
        "Weights int8 per channel, activations uint8 with min/max ranges calibrated on 512 "
        "training images; BN folded first. Products on PyTorch's x86 int8 engine "
        "(`quantized::conv2d`/`linear`). Anchor: `torch.ao.quantization.quantize_dynamic` "
        "(Linear layers only), measured in the same loop.\n\n" + table
    )
    return PartResult(rows, checks, md)


WEIGHT_GRID = [
    (levels, formulation, rounding)
    for levels in ("uniform-symmetric", "log2", "adaptive")
    for formulation in ("heuristic", "optimized")
    for rounding in ("nearest", "stochastic")
]


def part_weights(ctx: BenchContext) -> PartResult:
    data, quick = ctx.data, ctx.quick
    model = pretrained("lenet5", "mnist", progress=False).eval()
    limit = 2000 if quick else None
    base = _acc(model, data, limit)
    rows: list[dict] = [
        {"part": "weights", "method": "fp32", "bits": 32, "acc": base, "bytes": module_bytes(model)}
    ]
    configs: list[tuple[str, Any]] = []
    for bits in (4, 2):
        for levels, formulation, rounding in WEIGHT_GRID:
            cfg = QuantizeWeightsConfig(
                bits=bits, levels=levels, formulation=formulation, rounding=rounding
            )
            configs.append((f"{levels} / {formulation} / {rounding}", cfg))
    configs += [
        ("int8 (symmetric, per channel)", Int8Config(activations="float")),
        ("ternary (TWN)", TernaryConfig()),
        ("binary (BWN, per channel)", BinaryConfig()),
        ("multibit 2 bases (LQ/ABC)", MultibitConfig(num_bases=2)),
    ]
    for label, cfg in configs:
        small, _ = modelzip.compress(model, cfg, evaluate=False, measure=False)
        bits = getattr(cfg, "bits", None) or {"int8": 8, "ternary": 2, "binary": 1}.get(
            cfg.method, getattr(cfg, "num_bases", 0)
        )
        rows.append(
            {
                "part": "weights",
                "method": label,
                "bits": bits,
                "acc": _acc(small, data, limit),
                "bytes": module_bytes(small),
            }
        )
    best4 = max(r["acc"] for r in rows if r["bits"] == 4)
    checks = [
        check(
            "best 4-bit weights accuracy drop",
            round(base - best4, 2),
            0.5,
            "points",
            base - best4 <= 0.5,
        )
    ]
    md = (
        "### Weight-only quantization of LeNet-5 (no retraining)\n\n"
        f"Test accuracy ({'first 2,000' if quick else 'all 10,000'} test images) and stored "
        f"bytes (fp32: {base}%, {rows[0]['bytes']:,} bytes). Levels: "
        "uniform symmetric, power-of-two (INQ rule), adaptive (k-means); formulation: heuristic "
        "(min/max range; quantile levels) or optimized (clip search; Lloyd–Max); rounding: "
        "nearest or stochastic. Per channel.\n\n"
        + markdown_table(
            ["bits", "levels / formulation / rounding", "accuracy %", "bytes"],
            [[r["bits"], r["method"], r["acc"], f"{r['bytes']:,}"] for r in rows[1:]],
        )
    )
    return PartResult(rows, checks, md)


def _train_cfg(epochs: int, **kw: Any) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=128, lr=0.05, val_size=0, threads=1, **kw)


def part_influence(ctx: BenchContext) -> PartResult:
    data, quick = ctx.data, ctx.quick
    epochs, bits_list = (1, (4,)) if quick else (2, (4, 2))
    rows = []
    settings: list[tuple[str, int, TrainingQuantConfig]] = [
        ("none (fp32)", 32, TrainingQuantConfig())
    ]
    for bits in bits_list:
        settings += [(obj, bits, TrainingQuantConfig(**{obj: bits})) for obj in OBJECTS]
    settings.append(("WAGE 2-8-8-8", 2, wage()))
    for label, bits, qcfg in settings:
        torch.manual_seed(0)
        model = create("lenet300")
        qt = QuantizedTraining(model, qcfg, seed=0)
        try:
            train(model, data, _train_cfg(epochs), progress=False, callbacks=qt.callbacks)
            acc = _acc(model, data)  # evaluated with the weight and activation quantizers on
        except modelzip.core.errors.ModelError:
            acc = float("nan")  # diverged
        qt.remove()
        rows.append(
            {"part": "influence", "object": label, "bits": bits, "acc": acc, "epochs": epochs}
        )
    base = rows[0]["acc"]
    md_rows = [[r["object"], r["bits"], r["acc"], round(base - r["acc"], 2)] for r in rows]

    def harm(obj: str, bits: int) -> float:
        acc = next(r["acc"] for r in rows if r["object"] == obj and r["bits"] == bits)
        return float("inf") if math.isnan(acc) else -acc  # a diverged run is the most harmful

    order = {b: sorted(OBJECTS, key=lambda o, b=b: harm(o, b)) for b in bits_list}
    found = "; ".join(f"{b} bits: " + " ≤ ".join(v) for b, v in order.items())
    md = (
        "### Influence of quantizing one data object (LeNet-300-100, trained from scratch)\n\n"
        f"{epochs} epoch(s), SGD, per-tensor max scaling; gradients, errors and updates use "
        "stochastic rounding. The seed claims impact gradient ≤ weight < activation < error < "
        f"update. Measured (least to most harmful; one seed, so differences of a few tenths "
        f"are noise; nan = diverged): {found}.\n\n"
        + markdown_table(["quantized object", "bits", "accuracy %", "drop"], md_rows)
    )
    return PartResult(rows, [], md)


TWN_PAPER = {"full precision": 99.41, "TWN (ternary)": 99.35, "BWN (binary)": 99.05}


def part_twn(ctx: BenchContext) -> PartResult:
    data, quick = ctx.data, ctx.quick
    epochs = 1 if quick else 2
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=128,
        lr=0.1,
        schedule="onecycle",
        label_smoothing=0.1,
        val_size=0,
        threads=1,
    )
    rows, checks = [], []
    for label, step in (
        ("full precision", None),
        ("TWN (ternary)", "ternary"),
        ("BWN (binary)", "binary"),
    ):
        torch.manual_seed(0)
        model = create("twn_net")
        t0 = time.perf_counter()
        if step is None:
            train(model, data, cfg, progress=False)
        else:
            recipe = QATConfig(weights=step, per_channel=False)
            model, _ = modelzip.compress(
                model, recipe, data, finetune=cfg, evaluate=False, measure=False
            )
        acc = _acc(model, data)
        paper = TWN_PAPER[label]
        rows.append(
            {
                "part": "twn",
                "model": label,
                "acc": acc,
                "paper": paper,
                "epochs": epochs,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        gap = round(abs(paper - acc), 2)
        checks.append(
            check(f"TWN table: {label} within 0.3 of {paper}", gap, 0.3, "points", gap <= 0.3)
        )
    md = (
        "### TWN (Li & Liu 2016), MNIST, 32C5-MP2-64C5-MP2-512FC with BN\n\n"
        f"Trained from scratch, {epochs} epoch(s) each, SGD one-cycle lr 0.1, label smoothing "
        "0.1, batch 128, no augmentation, 1 CPU thread; quantized nets train with "
        "straight-through gradients (all conv and FC layers, one scale per layer).\n\n"
        + markdown_table(
            ["weights", "paper %", "ours %", "epochs", "seconds"],
            [[r["model"], r["paper"], r["acc"], r["epochs"], r["seconds"]] for r in rows],
        )
    )
    return PartResult(rows, checks, md)


def _ddp_worker(rank: int, world: int, port: int, hook_name: str, epochs: int, out: str) -> None:
    import torch.distributed as dist

    from modelzip.quantize.ddp_hooks import QuantHookState, onebit_hook, qsgd_hook, terngrad_hook

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = load_dataset("mnist")
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(create("lenet300"))
    state = QuantHookState(levels=4, seed=rank)
    hooks = {"terngrad": terngrad_hook, "qsgd": qsgd_hook, "onebit": onebit_hook}
    if hook_name in hooks:
        model.register_comm_hook(state, hooks[hook_name])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data.x_train[rank::world], data.y_train[rank::world]
    g = torch.Generator().manual_seed(rank)
    steps = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
    seconds = time.perf_counter() - t0
    if rank == 0:
        acc = _acc(model.module, data)
        n = sum(p.numel() for p in model.parameters())
        result = {
            "hook": hook_name,
            "acc": acc,
            "steps": steps,
            "seconds": round(seconds, 1),
            "bytes_per_step": state.bytes_sent / steps if hook_name in hooks else None,
            "fp32_bytes_per_step": 4 * n,
        }
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def part_ddp(ctx: BenchContext) -> PartResult:
    import torch.multiprocessing as mp

    quick, tmp = ctx.quick, tempfile.mkdtemp(prefix="modelzip-quantize-")

    # "Final accuracy" (the words): quantized gradients add variance, so after 3 epochs
    # TernGrad / QSGD were still 0.66 / 0.55 points behind fp32 (run of 2026-11-28); the full
    # budget trains 10 epochs, where each run has flattened out.
    epochs = 1 if quick else 10
    rows, checks = [], []
    for hook in ("fp32", "terngrad", "qsgd", "onebit"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = os.path.join(tmp, f"ddp-{hook}.json")
        mp.spawn(_ddp_worker, args=(2, port, hook, epochs, out), nprocs=2, join=True)
        with open(out) as f:
            r = json.load(f)
        r["part"] = "ddp"
        r["bytes_per_step"] = r["bytes_per_step"] or r["fp32_bytes_per_step"]
        r["compression"] = round(r["fp32_bytes_per_step"] / r["bytes_per_step"], 1)
        rows.append(r)
    base = rows[0]["acc"]
    for r in rows[1:]:
        drop = round(base - r["acc"], 2)
        checks.append(
            check(f"DDP {r['hook']} accuracy drop vs fp32", drop, 0.5, "points", drop <= 0.5)
        )
    md = (
        "### DDP with quantized gradients (2 processes, gloo, LeNet-300-100)\n\n"
        f"{epochs} epoch(s), batch 64 per process, SGD momentum 0.9; bytes each process sends "
        "per step (all-gather of packed codes and scales vs the float32 all-reduce). After 3 "
        "epochs (an earlier run) TernGrad and QSGD were 0.66 and 0.55 points behind fp32: the "
        "quantized gradients converge more slowly, so the full budget trains to 10.\n\n"
        + markdown_table(
            ["gradients", "bytes/step", "fp32 bytes/step", "compression", "accuracy %", "seconds"],
            [
                [
                    r["hook"],
                    int(r["bytes_per_step"]),
                    r["fp32_bytes_per_step"],
                    r["compression"],
                    r["acc"],
                    r["seconds"],
                ]
                for r in rows
            ],
        )
    )
    return PartResult(rows, checks, md)


def _section(ctx: BenchContext, done: dict[str, dict[str, Any]]) -> str:
    """The ``quantize`` section: when and how each part last ran, the checks, the parts."""
    checks = [c for r in done.values() for c in r["checks"]]
    summary = markdown_table(
        ["check", "value", "target", "met"],
        [
            [
                c["name"],
                c["value"],
                f"{c['target']} {c['unit']}",
                "yes" if c["passed"] else "**no**",
            ]
            for c in checks
        ],
    )
    runs = "; ".join(
        f"{p}: {'quick' if r['quick'] else 'full'} run of {r['date'][:10]}, {r['seconds']:.0f} s"
        for p, r in done.items()
    )
    header = f"## Data quantization (`benchmarks/quantize.py`)\n\n{runs}.\n\n{summary}\n\n"
    return header + "\n\n".join(r["markdown"] for r in done.values())


def _cli_train(argv: list[str], out: str, *, processes: int = 1) -> dict[str, Any]:
    """``modelzip train ... --json`` in fresh processes (``torchrun`` for several); the JSON
    rank 0 prints."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    command = str(Path(sys.executable).parent / "modelzip")  # the installed console script
    launcher = [command]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={processes}", "--no-python", command]  # fmt: skip
    done = subprocess.run([*launcher, "train", *argv, "--out", out, "--json", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=3600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"modelzip train failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout[done.stdout.index("{") :])


def part_cli_ddp(ctx: BenchContext) -> PartResult:
    """``modelzip train --grad-compress qsgd`` from the command line, two processes under
    ``torchrun`` sharing each batch, against the same command uncompressed in one process; the
    full run repeats both for five seeds (one run's drop varies by a few tenths of a point: three
    seeds gave 0.53, 0.61, 0.33) and checks the mean drop."""
    epochs = 1 if ctx.quick else 10
    seeds = (0,) if ctx.quick else (0, 1, 2, 3, 4)
    tmp = tempfile.mkdtemp(prefix="modelzip-cli-ddp-")
    rows, drops = [], []
    for seed in seeds:
        argv = ["lenet300", "--dataset", "mnist", "--epochs", str(epochs), "--seed", str(seed)]
        plain = _cli_train(argv, os.path.join(tmp, f"fp32-{seed}.mzip"))
        qsgd = _cli_train([*argv, "--grad-compress", "qsgd"], os.path.join(tmp, f"q-{seed}.mzip"),
                          processes=2)  # fmt: skip
        drops.append(round(100 * (plain["accuracy"] - qsgd["accuracy"]), 2))
        rows += [
            {"part": "cli_ddp", "seed": seed, "run": "modelzip train (1 process, fp32 gradients)",
             "accuracy": plain["accuracy"], "seconds": plain["seconds"]},
            {"part": "cli_ddp", "seed": seed,
             "run": "torchrun, 2 processes: modelzip train --grad-compress qsgd",
             "accuracy": qsgd["accuracy"], "seconds": qsgd["seconds"],
             "grad_compression": qsgd.get("grad_compression")},
        ]  # fmt: skip
    mean = round(sum(drops) / len(drops), 2)
    checks = [check(f"CLI torchrun 2-process qsgd accuracy drop vs uncompressed (mean of "
                    f"{len(seeds)} seed(s): {', '.join(map(str, drops))})", mean, 0.5, "points",
                    mean <= 0.5)]  # fmt: skip
    table = markdown_table(
        ["seed", "run", "test accuracy %", "seconds"],
        [[str(r["seed"]), r["run"], f"{100 * r['accuracy']:.2f}", f"{r['seconds']:.0f}"]
         for r in rows],
    )  # fmt: skip
    md = (
        "### Gradient compression from the command line (`torchrun`, 2 processes)\n\n"
        f"LeNet-300-100 on MNIST, {epochs} epoch(s), seeds {', '.join(map(str, seeds))}, the "
        "model's tuned training settings; `torchrun --standalone --nproc-per-node=2 --no-python "
        "modelzip train ... --grad-compress qsgd` (4-bit QSGD through the DDP hook, the two "
        "processes sharing each batch) against `modelzip train` with the same flags in one "
        f"process. Drops per seed: {', '.join(map(str, drops))} points (mean {mean}).\n\n" + table
    )
    return PartResult(rows, checks, md)


PARTS = {
    "int8": part_int8,
    "weights": part_weights,
    "influence": part_influence,
    "twn": part_twn,
    "ddp": part_ddp,
    "cli_ddp": part_cli_ddp,
}  # in order of priority


def main(argv: list[str] | None = None) -> int:
    """Other parts' last results are kept (``--no-keep`` drops them); a failing part is recorded
    as failed without losing the others'."""
    return run_parts(
        "quantize", "Data quantization", PARTS, __doc__.splitlines()[0], argv,
        load_data=load_mnist, section=_section, keep=True, catch=True,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
