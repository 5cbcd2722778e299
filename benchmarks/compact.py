"""Compact models: RNN units and networks, compact CNNs, compactifying a trained CNN, and NAS.

    python benchmarks/compact.py                 # all five parts (see BUDGETS for the budget)
    python benchmarks/compact.py --parts 1,3     # some parts; others are kept from the last run
    python benchmarks/compact.py --quick         # tiny budgets (< 5 minutes), checks plumbing
    python benchmarks/compact.py --device cuda   # train on a GPU (latency is always CPU)

Parts: 1 row-by-row MNIST with LSTM/GRU/MGU/JANET/S-LSTM at similar parameter budgets; 2 the
Shakespeare character LM with the network-level variants; 3 compact CNNs against LeNet-5 and the
small VGG; 4 compactifying the trained small VGG with distillation; 5 NAS (regularized evolution,
random search, hardware-aware evolution, DARTS). Writes ``benchmarks/results/compact.json``
(``compact-quick.json`` with ``--quick``, which leaves BENCHMARKS.md alone) and the ``compact``
section of BENCHMARKS.md. Latency is measured on the CPU with one thread, batch 1, all models of a
table timed in interleaved rounds, and reported as a ratio to LeNet-5.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    BenchContext,
    PartResult,
    check,
    load_mnist,
    machine_info,
    markdown_table,
    run_parts,
)

import modelzip
from modelzip.baselines import pretrained
from modelzip.compact import (
    BottleneckConvConfig,
    DepthwiseSeparableConfig,
    GroupConvConfig,
    SkipRNN,
    distill,
    recalibrate_batchnorm,
)
from modelzip.compact.nas import (
    BlockSpace,
    SearchObjective,
    SearchResult,
    arch_key,
    build_genotype,
    darts_search,
    genotype_summary,
    model_costs,
    random_search,
    regularized_evolution,
)
from modelzip.core.timing import time_named
from modelzip.data import load_dataset
from modelzip.models import create
from modelzip.train import TrainConfig, default_train_config, evaluate, train

BUDGETS: dict[str, dict[str, Any]] = {
    "quick": {"train": 4000, "rnn_epochs": 1, "rnn_params": 12_000, "cnn_epochs": 1,
              "lm_steps": 30, "lm_hidden": 64, "distill_epochs": 1, "nas_pop": 3,
              "nas_cycles": 3, "nas_train": 1000, "nas_minutes": 2.0, "nas_retrain": 1,
              "darts_epochs": 1, "darts_train": 1000},
    "full": {"train": None, "rnn_epochs": 8, "rnn_params": 25_000, "cnn_epochs": 4,
             "lm_steps": 300, "lm_hidden": 128, "distill_epochs": 3, "nas_pop": 8,
             "nas_cycles": 24, "nas_train": 10_000, "nas_minutes": 20.0, "nas_retrain": 8,
             "darts_epochs": 2, "darts_train": 10_000},
    # For a loaded 2-core CPU: a 1-epoch teacher VGG, distillation and NAS retraining on subsets.
    "cpu": {"train": None, "rnn_epochs": 4, "rnn_params": 25_000, "cnn_epochs": 4,
            "lm_steps": 300, "lm_hidden": 128, "distill_epochs": 1, "distill_train": 20_000,
            "teacher_epochs": 1, "nas_pop": 6, "nas_cycles": 10, "nas_train": 5000,
            "nas_minutes": 15.0, "nas_retrain": 2, "retrain_train": 30_000, "best_retrain": 4,
            "darts_epochs": 1, "darts_train": 2000},
}  # fmt: skip
RNN_CELLS = {"lstm": {}, "gru": {}, "mgu": {}, "janet": {}, "slstm": {"variant": 1}}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: torch.nn.Module) -> int:
    return model_costs(model.cpu(), (1, 28, 28), latency=False, hardware=None)["macs"]


def latencies(models: dict[str, torch.nn.Module], rounds: int = 5) -> dict[str, float]:
    """Median CPU batch-1 latency (ms) of each model, the models called in turns (at least
    ``10 * rounds`` calls and ``0.1 * rounds`` s each), the first calls left out."""
    timings = time_named({k: m.cpu().eval() for k, m in models.items()}, torch.rand(1, 1, 28, 28),
                         reps=10 * rounds, warmup=3, min_seconds=0.1 * rounds * len(models),
                         grad="inference")  # fmt: skip
    return {k: t.ms for k, t in timings.items()}


def fit(model, data, config, device):
    model.to(device)
    result = train(model, data, config, progress=False)
    return result, evaluate(model, data, "test")["accuracy"]


def pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.2f}%"


# --------------------------------------------------------------------------------------- part 1
def part_rnn(ctx: BenchContext) -> PartResult:
    mnist, budget, device = ctx.data, _budget(ctx), ctx.device
    data = mnist.subset(train=budget["train"]) if budget["train"] else mnist
    config = TrainConfig(
        epochs=budget["rnn_epochs"],
        lr=3e-3,
        optimizer="adam",
        weight_decay=0.0,
        grad_clip=1.0,
        channels_last=False,
        val_size=2000,
    )
    rows = []
    for cell, kwargs in RNN_CELLS.items():
        # The hidden size whose model is closest to the parameter budget.
        sizes = range(8, 257)
        counts = {h: params(create("rnn_mnist", cell=cell, hidden_size=h, cell_kwargs=kwargs))
                  for h in sizes}  # fmt: skip
        hidden = min(sizes, key=lambda h: abs(counts[h] - budget["rnn_params"]))
        torch.manual_seed(0)
        model = create("rnn_mnist", cell=cell, hidden_size=hidden, cell_kwargs=kwargs)
        result, acc = fit(model, data, config, device)
        rows.append({"part": 1, "cell": cell, "hidden": hidden, "params": params(model),
                     "test_accuracy": acc, "seconds": round(result.seconds, 1)})  # fmt: skip
        print(f"[1] {cell}: h={hidden} params={params(model)} acc={acc:.4f}", flush=True)
    by = {r["cell"]: r for r in rows}
    same_h = params(create("rnn_mnist", cell="mgu", hidden_size=64)) - 650
    gru_h = params(create("rnn_mnist", cell="gru", hidden_size=64)) - 650
    checks = [
        check("row MNIST: JANET test accuracy (published 99.0% on pixel-by-pixel MNIST)",
              by["janet"]["test_accuracy"], 0.99, "fraction",
              by["janet"]["test_accuracy"] >= 0.99),
        check("row MNIST: JANET minus LSTM accuracy (published +0.5 pp)",
              by["janet"]["test_accuracy"] - by["lstm"]["test_accuracy"], 0.0, "fraction",
              by["janet"]["test_accuracy"] >= by["lstm"]["test_accuracy"]),
        check("row MNIST: MGU minus GRU accuracy at the same budget (published about 0)",
              by["mgu"]["test_accuracy"] - by["gru"]["test_accuracy"], -0.005, "fraction",
              by["mgu"]["test_accuracy"] - by["gru"]["test_accuracy"] >= -0.005),
        check("MGU / GRU recurrent parameters at equal hidden size (published about 2/3)",
              round(same_h / gru_h, 4), 0.67, "ratio", same_h / gru_h <= 0.67),
    ]  # fmt: skip
    table = markdown_table(
        ["unit", "hidden", "params", "test accuracy", "train s"],
        [[r["cell"], r["hidden"], f"{r['params']:,}", pct(r["test_accuracy"]), r["seconds"]]
         for r in rows],
    )  # fmt: skip
    md = (f"### 1. Row-by-row MNIST (28 steps of 28 pixels), about {budget['rnn_params']:,} "
          f"parameters each\n\n{budget['rnn_epochs']} epochs, Adam 3e-3, cosine, batch 128. "
          "Published (JANET paper, 128 units, on the harder pixel-by-pixel sequence of 784 "
          "steps): JANET 99.0%, LSTM 98.5%; "
          "MGU about GRU's accuracy with a third fewer parameters.\n\n" + table)  # fmt: skip
    return _result(ctx, rows, checks, md)


# --------------------------------------------------------------------------------------- part 2
def lm_loss(model, rows):
    logits = model(rows[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
    if isinstance(model.rnn, SkipRNN):  # Campos et al.'s budget loss on the update gates
        loss = loss + model.rnn.budget_loss(1e-4)
    return loss


def part_lm(ctx: BenchContext) -> PartResult:
    budget, device = _budget(ctx), ctx.device
    corpus = load_dataset("shakespeare")
    h, seq, batch = budget["lm_hidden"], 64, 32
    variants = {
        "LSTM": {"cell": "lstm"},
        "LSTMP (p = h/2)": {"cell": "lstmp", "cell_kwargs": {"proj_size": h // 2}},
        "F-LSTM (r = h/2)": {"cell": "flstm", "cell_kwargs": {"rank": h // 2}},
        "G-LSTM (G = 2)": {"cell": "glstm", "cell_kwargs": {"groups": 2}},
        "residual LSTM": {"cell": "lstm", "residual": True},
        "Skip RNN (GRU, 1 layer)": {"cell": "gru", "skip": True, "num_layers": 1},
    }
    windows = corpus.train.unfold(0, seq + 1, seq)
    rows = []
    for name, kwargs in variants.items():
        torch.manual_seed(0)
        kw = {"num_layers": 2, **kwargs}
        model = create("rnn_char", vocab_size=corpus.vocab_size, hidden_size=h, **kw).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen, t0 = torch.Generator().manual_seed(0), time.perf_counter()
        model.train()
        for step in range(budget["lm_steps"]):
            rows_b = windows[torch.randint(0, len(windows), (batch,), generator=gen)].to(device)
            for g in opt.param_groups:
                g["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / budget["lm_steps"]))
            opt.zero_grad(set_to_none=True)
            lm_loss(model, rows_b).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        val = corpus.val[: 64 * 200 + 1]
        ppl = evaluate(model, corpus, val, seq_len=seq)["perplexity"]
        row = {"part": 2, "variant": name, "params": params(model), "val_perplexity": ppl,
               "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        if isinstance(model.rnn, SkipRNN):
            with torch.no_grad():
                model.eval()(val[:-1].reshape(1, -1)[:, :512].to(device))
            row["update_fraction"] = float(model.rnn.updates.mean())
        rows.append(row)
        print(f"[2] {name}: params={row['params']} ppl={ppl:.3f}", flush=True)
    base = rows[0]
    checks = [
        check(f"char LM: {r['variant']} parameters / LSTM's",
              round(r["params"] / base["params"], 3), 1.0, "ratio", r["params"] < base["params"])
        for r in rows[1:3] + rows[3:4]
    ]  # fmt: skip
    table = markdown_table(
        ["network", "params", "val perplexity", "updates", "train s"],
        [[r["variant"], f"{r['params']:,}", f"{r['val_perplexity']:.3f}",
          pct(r["update_fraction"]) if "update_fraction" in r else "all", r["seconds"]]
         for r in rows],
    )  # fmt: skip
    md = (f"### 2. Shakespeare character LM: perplexity against parameters\n\nHidden {h}, two "
          f"layers (Skip RNN one), embedding 64, {budget['lm_steps']} Adam steps of 32 x 64 "
          "characters; validation perplexity on the first 12,800 validation characters. A short "
          "budget: compare the rows, not with published perplexities.\n\n" + table)  # fmt: skip
    return _result(ctx, rows, checks, md)


# --------------------------------------------------------------------------------------- part 3
def teachers(mnist, budget, device) -> dict[str, torch.nn.Module]:
    if budget["train"]:  # quick: the cached LeNet-5 if any, a briefly trained small VGG
        vgg = create("vgg_small")
        torch.manual_seed(0)
        fit(vgg, mnist.subset(train=budget["train"]), TrainConfig(epochs=1, lr=0.1,
            schedule="onecycle"), device)  # fmt: skip
        return {"lenet5": pretrained("lenet5", progress=False), "vgg_small": vgg.cpu().eval()}
    if budget.get("teacher_epochs"):  # a shorter run of the small VGG's default recipe
        torch.manual_seed(0)
        vgg = create("vgg_small")
        config = default_train_config("vgg_small").replace(epochs=budget["teacher_epochs"])
        fit(vgg, mnist, config, device)
        return {"lenet5": pretrained("lenet5", progress=False), "vgg_small": vgg.cpu().eval()}
    if device == "cpu":  # the cached zoo baselines (trained once with their default configs)
        return {n: pretrained(n, progress=False) for n in ("lenet5", "vgg_small")}
    out = {}
    for n in ("lenet5", "vgg_small"):  # the same recipe as the cached baselines, on the GPU
        torch.manual_seed(0)
        out[n] = create(n)
        fit(out[n], mnist, default_train_config(n), device)
        out[n].cpu().eval()
    return out


def part_cnn(ctx: BenchContext) -> PartResult:
    mnist, budget, device, models = ctx.data, _budget(ctx), ctx.device, _teachers(ctx)
    data = mnist.subset(train=budget["train"]) if budget["train"] else mnist
    config = TrainConfig(epochs=budget["cnn_epochs"], batch_size=128, lr=0.1, schedule="onecycle")
    rows, trained = [], dict(models)
    for name in ("lenet5", "vgg_small"):
        acc = evaluate(models[name].to(device), mnist)["accuracy"]
        rows.append({"part": 3, "model": name, "epochs": "baseline", "test_accuracy": acc})
    for name in ("mobilenet_mnist", "shufflenet_mnist", "squeezenet_mnist"):
        torch.manual_seed(0)
        model = create(name)
        result, acc = fit(model, data, config, device)
        trained[name] = model
        rows.append({"part": 3, "model": name, "epochs": budget["cnn_epochs"],
                     "test_accuracy": acc, "seconds": round(result.seconds, 1)})  # fmt: skip
        print(f"[3] {name}: acc={acc:.4f}", flush=True)
    lat = latencies({r["model"]: trained[r["model"]].eval() for r in rows})
    for r in rows:
        m = trained[r["model"]]
        r |= {"params": params(m), "macs": macs(m), "latency_ms": lat[r["model"]],
              "latency_vs_lenet5": lat[r["model"]] / lat["lenet5"]}  # fmt: skip
    compact = [r for r in rows if r["model"].endswith("_mnist")]
    best = max(compact, key=lambda r: r["test_accuracy"])
    lenet = rows[0]
    checks = [
        check(f"compact CNN: best test accuracy ({best['model']})", best["test_accuracy"], 0.99,
              "fraction", best["test_accuracy"] >= 0.99),
        check(f"compact CNN: {best['model']} parameters / LeNet-5's", round(best["params"] /
              lenet["params"], 4), 0.15, "ratio", best["params"] <= 0.15 * lenet["params"]),
    ]  # fmt: skip
    table = markdown_table(
        ["model", "epochs", "test accuracy", "params", "MACs", "latency ms", "x LeNet-5"],
        [[r["model"], r["epochs"], pct(r["test_accuracy"]), f"{r['params']:,}", f"{r['macs']:,}",
          f"{r['latency_ms']:.3f}", f"{r['latency_vs_lenet5']:.2f}"] for r in rows],
    )  # fmt: skip
    md = ("### 3. Compact CNNs against LeNet-5 and the small VGG (MNIST)\n\nBaselines trained "
          "with their zoo default configs; the compact models trained "
          f"{budget['cnn_epochs']} epochs (SGD one-cycle, lr 0.1). Latency: CPU, one thread, "
          "batch 1, interleaved rounds.\n\n" + table)  # fmt: skip
    return _result(ctx, rows, checks, md)


# --------------------------------------------------------------------------------------- part 4
def part_compactify(ctx: BenchContext) -> PartResult:
    mnist, budget, device = ctx.data, _budget(ctx), ctx.device
    teacher = _teachers(ctx)["vgg_small"]
    size = budget["train"] or budget.get("distill_train")
    data = mnist.subset(train=size) if size else mnist
    teacher = teacher.to(device).eval()
    base_acc = evaluate(teacher, mnist)["accuracy"]
    base_p, base_m = params(teacher), macs(copy.deepcopy(teacher))
    teacher.to(device)
    rows = [{"part": 4, "method": "none (teacher)", "params": base_p, "macs": base_m,
             "accuracy_replaced": base_acc, "accuracy_recalibrated": base_acc,
             "accuracy_distilled": base_acc}]  # fmt: skip
    configs = {
        "depthwise_separable (m=1)": DepthwiseSeparableConfig(depth_multiplier=1),
        "group_conv (g=4)": GroupConvConfig(groups=4),
        "bottleneck_conv (f=0.5)": BottleneckConvConfig(width_fraction=0.5),
    }
    config = TrainConfig(epochs=budget["distill_epochs"], batch_size=128, lr=0.02,
                         schedule="cosine", weight_decay=1e-4)  # fmt: skip
    for name, method in configs.items():
        student, _ = modelzip.compress(teacher.cpu(), method, measure=False, evaluate=False)
        teacher.to(device)
        student.to(device)
        replaced = evaluate(student, mnist)["accuracy"]
        recalibrate_batchnorm(student, data.x_train)
        recalibrated = evaluate(student, mnist)["accuracy"]
        result = distill(student, teacher, data, config, temperature=4.0, alpha=0.9)
        acc = evaluate(student, mnist)["accuracy"]
        rows.append({"part": 4, "method": name, "params": params(student),
                     "macs": macs(copy.deepcopy(student)), "accuracy_replaced": replaced,
                     "accuracy_recalibrated": recalibrated, "accuracy_distilled": acc,
                     "seconds": round(result.seconds, 1)})  # fmt: skip
        print(f"[4] {name}: replaced={replaced:.4f} BN={recalibrated:.4f} KD={acc:.4f}", flush=True)
    sep = rows[1]
    checks = [
        check("compactify VGG (depthwise-separable): parameters saved", round(1 - sep["params"] /
              base_p, 4), 0.5, "fraction", sep["params"] <= 0.5 * base_p),
        check("compactify VGG (depthwise-separable): MACs saved", round(1 - sep["macs"] / base_m,
              4), 0.5, "fraction", sep["macs"] <= 0.5 * base_m),
        check("compactify VGG (depthwise-separable): accuracy lost after distillation",
              round(base_acc - sep["accuracy_distilled"], 4), 0.005, "fraction",
              base_acc - sep["accuracy_distilled"] <= 0.005),
    ]  # fmt: skip
    table = markdown_table(
        ["replacement", "params", "MACs", "acc. replaced", "+ BN recalibrated", "+ distilled"],
        [[r["method"], f"{r['params']:,}", f"{r['macs']:,}", pct(r["accuracy_replaced"]),
          pct(r.get("accuracy_recalibrated", math.nan)), pct(r["accuracy_distilled"])]
         for r in rows],
    )  # fmt: skip
    teacher_epochs = budget.get("teacher_epochs") or default_train_config("vgg_small").epochs
    md = ("### 4. Compactifying the trained small VGG\n\nThe teacher: the small VGG trained "
          f"{teacher_epochs} epoch(s) with its default recipe. Every conv replaced, initialised "
          "from its trained kernel; BatchNorm statistics re-estimated on 20 batches (no "
          "training); then distilled (Hinton KD, T = 4, alpha = 0.9) for "
          f"{budget['distill_epochs']} epoch(s) on {len(data.x_train):,} training images (SGD, "
          "lr 0.02, cosine).\n\n" + table)  # fmt: skip
    return _result(ctx, rows, checks, md)


# --------------------------------------------------------------------------------------- part 5
class _TimeUp(Exception):
    pass


def _search(kind, space, evaluate_fn, budget, path, deadline) -> SearchResult:
    def stop(entry, n):
        if time.perf_counter() > deadline:
            raise _TimeUp

    path.unlink(missing_ok=True)
    n = budget["nas_pop"] + budget["nas_cycles"]
    try:
        if kind == "random":
            return random_search(space, evaluate_fn, trials=n, checkpoint=path, callback=stop)
        return regularized_evolution(
            space,
            evaluate_fn,
            population=budget["nas_pop"],
            sample_size=min(3, budget["nas_pop"]),
            cycles=budget["nas_cycles"],
            checkpoint=path,
            callback=stop,
        )
    except _TimeUp:  # the checkpoint holds everything evaluated so far
        saved = json.loads(path.read_text())
        return SearchResult(saved["algorithm"], saved["history"], saved["population"])


def part_nas(ctx: BenchContext) -> PartResult:
    mnist, budget, device = ctx.data, _budget(ctx), ctx.device
    space = BlockSpace()
    objective = SearchObjective(max_params=50_000, train_size=budget["nas_train"], val_size=5000,
                                epochs=1, lr=0.1, device=device)  # fmt: skip
    cache: dict[str, dict[str, Any]] = {}

    def evaluate_arch(arch):
        key = arch_key(arch)
        if key not in cache:
            cache[key] = objective(space.build(arch), mnist, key)
        return cache[key]

    start = time.perf_counter()
    minutes = budget["nas_minutes"]
    tmp = Path(tempfile.mkdtemp(prefix="modelzip-nas-"))  # the searches' checkpoints
    evo = _search("evolution", space, evaluate_arch, budget, tmp / "evo.json",
                  start + 0.45 * minutes * 60)  # fmt: skip
    rnd = _search("random", space, evaluate_arch, budget, tmp / "random.json",
                  start + 0.75 * minutes * 60)  # fmt: skip
    # Hardware-aware: the same proxy accuracy, rewarded against an energy target (the median
    # energy of the architectures seen so far), so the search trades accuracy for energy.
    energies = sorted(m["energy"] for m in cache.values())
    hw = objective.replace(energy_target=energies[len(energies) // 2], penalty=0.3)

    def evaluate_hw(arch):
        m = evaluate_arch(arch)
        return {**m, "score": hw.reward(m["accuracy"], m) if m["accuracy"] else 0.0}

    hwr = _search("evolution", space, evaluate_hw, budget, tmp / "hw.json",
                  start + minutes * 60)  # fmt: skip
    search_s = time.perf_counter() - start
    rows, retrain = [], TrainConfig(epochs=budget["nas_retrain"], lr=0.1, schedule="onecycle")
    size = budget["train"] or budget.get("retrain_train")
    data = mnist.subset(train=size) if size else mnist
    for label, result in (("evolution", evo), ("random search", rnd), ("hardware-aware", hwr)):
        best = result.best
        torch.manual_seed(0)
        model = space.build(best["arch"])
        _, acc = fit(model, data, retrain, device)
        rows.append({"part": 5, "search": label, "evaluations": len(result.history),
                     "arch": best["arch"], "params": best["metrics"]["params"],
                     "proxy_accuracy": best["metrics"]["accuracy"],
                     "energy": best["metrics"]["energy"], "test_accuracy": acc})  # fmt: skip
        print(f"[5] {label}: {best['arch']} acc={acc:.4f}", flush=True)
    if budget.get("best_retrain"):  # the evolution winner again, longer and on all the images
        torch.manual_seed(0)
        model = space.build(evo.best["arch"])
        _, acc = fit(model, mnist, retrain.replace(epochs=budget["best_retrain"]), device)
        rows.append({**rows[0], "search": f"evolution, retrained {budget['best_retrain']} "
                     "epochs on all images", "test_accuracy": acc})  # fmt: skip
        print(f"[5] evolution, longer retraining: acc={acc:.4f}", flush=True)
    darts = darts_search(mnist, epochs=budget["darts_epochs"], width=8, nodes=2,
                         train_size=budget["darts_train"], device=device)  # fmt: skip
    net = build_genotype(darts.genotype, width=8, nodes=2)
    _, acc = fit(net, data, retrain, device)
    costs = model_costs(net.cpu(), (1, 28, 28), latency=False)
    rows.append({"part": 5, "search": "DARTS (first order)", "evaluations": "supernet",
                 "arch": genotype_summary(darts.genotype), "params": costs["params"],
                 "proxy_accuracy": darts.history[-1]["val_accuracy"], "energy": costs["energy"],
                 "test_accuracy": acc})  # fmt: skip
    evo_row, hw_row = rows[-2] if budget.get("best_retrain") else rows[0], rows[2]
    checks = [
        check("NAS: best architecture's parameters (<= 50k)", evo_row["params"], 50_000, "params",
              evo_row["params"] <= 50_000),
        check("NAS: its test accuracy after retraining", evo_row["test_accuracy"], 0.99,
              "fraction", evo_row["test_accuracy"] >= 0.99),
        check("NAS: search wall time", round(search_s / 60, 1), 30.0, "minutes",
              search_s <= 30 * 60),
        check("NAS: hardware-aware energy / accuracy-only energy", round(hw_row["energy"] /
              evo_row["energy"], 3), 1.0, "ratio", hw_row["energy"] <= evo_row["energy"]),
    ]  # fmt: skip
    table = markdown_table(
        ["search", "evaluations", "params", "proxy acc.", "test acc.", "energy (norm.)", "arch"],
        [[r["search"], r["evaluations"], f"{r['params']:,}", pct(r["proxy_accuracy"]),
          pct(r["test_accuracy"]), f"{r['energy']:.3g}", f"`{r['arch']}`"] for r in rows],
    )  # fmt: skip
    md = (f"### 5. NAS on MNIST (<= 50k parameters)\n\nSearch {search_s / 60:.1f} minutes in "
          f"all; each candidate trained 1 epoch on {budget['nas_train']:,} images, scored on "
          "5,000 held-out training images; the winners retrained "
          f"{budget['nas_retrain']} epochs on {len(data.x_train):,} images and tested. "
          "Hardware-aware: MnasNet reward against the "
          "median energy (Eyeriss model), penalty exponent -0.3.\n\n" + table)  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    evaluated = [{"search": label, "arch": e["arch"], "score": e["metrics"]["score"],
                  **{k: e["metrics"].get(k) for k in ("accuracy", "params", "macs", "energy")}}
                 for label, res in (("evolution", evo), ("random", rnd), ("hardware", hwr))
                 for e in res.history]  # fmt: skip
    return _result(ctx, rows, checks, md, evaluated=evaluated)


def _budget(ctx: BenchContext) -> dict[str, Any]:
    return BUDGETS["quick" if ctx.quick else ctx.options.budget]


def _teachers(ctx: BenchContext) -> dict[str, torch.nn.Module]:
    """The trained LeNet-5 and small VGG that parts 3 and 4 share (made once per run)."""
    return ctx.cached("teachers", lambda: teachers(ctx.data, _budget(ctx), ctx.device))


def _result(ctx: BenchContext, rows: list, checks: list, md: str, **extra: Any) -> PartResult:
    """A part's result, stored with where it ran and on which budget."""
    where = {"device": ctx.device, "budget": _budget(ctx), "machine": machine_info()}
    return PartResult(rows, checks, md, {**extra, **where})


def _section(ctx: BenchContext, done: dict[str, dict[str, Any]]) -> str:
    """The ``compact`` section: each part's markdown with where and how long it ran, then the
    checks."""
    checks = [c for p in done.values() for c in p["checks"]]
    lines = ["## Compact models (`benchmarks/compact.py`)", ""]
    for p in done.values():
        where = f"{p['device']}, CPU {p['machine']['cpu']} ({p['machine']['cores']} cores)"
        lines += [p["markdown"], "", f"*Ran on {where} in {p['seconds'] / 60:.1f} min.*", ""]
    lines += ["| check | value | target | passed |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['value']:.4g} | {c['target']:g} | "
              f"{'yes' if c['passed'] else '**missed**'} |" for c in checks]  # fmt: skip
    return "\n".join(lines)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="see BUDGETS")
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda)")


PARTS = {"1": part_rnn, "2": part_lm, "3": part_cnn, "4": part_compactify, "5": part_nas}


def main(argv: list[str] | None = None) -> int:
    """Parts not run keep their last results (``--no-keep`` drops them)."""
    return run_parts(
        "compact", "Compact models", PARTS, __doc__.splitlines()[0], argv, options=_options,
        load_data=load_mnist, section=_section, keep=True,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
