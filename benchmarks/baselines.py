"""Train the baseline zoo models from scratch with their default configs; compare with papers.

    python benchmarks/baselines.py                    # the five baselines (~20 min on 2 cores)
    python benchmarks/baselines.py --parts lenet300,lenet5   # others kept (or --models)
    python benchmarks/baselines.py --quick            # LeNet-300-100 for 3 epochs (< 1 minute)

Writes ``benchmarks/results/baselines.json`` and the ``baselines`` section of BENCHMARKS.md. The
quick run checks that training works, not the published targets; it writes
``results/baselines-quick.json`` and leaves BENCHMARKS.md alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from _common import (
    BenchContext,
    Part,
    PartResult,
    check,
    machine_info,
    markdown_table,
    run_parts,
)

QUICK_EPOCHS, QUICK_TARGET = 3, 3.0  # LeNet-300-100 reaches about 2% error in 3 epochs


def run_model(name: str, quick: bool, progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train ``name`` from scratch; return (results row, check)."""
    import torch

    from modelzip.baselines import PUBLISHED
    from modelzip.data import TextCorpus, load_dataset
    from modelzip.models import create, model_info
    from modelzip.train import default_train_config, evaluate, train

    info = model_info(name)
    config = default_train_config(name)
    if quick:
        config = config.replace(epochs=QUICK_EPOCHS)
    data = load_dataset(info.dataset)
    torch.manual_seed(config.seed)
    model = create(name)
    result = train(model, data, config, progress=progress)
    test = evaluate(model, data, "test")
    published = PUBLISHED.get(name, {})
    row: dict[str, Any] = {
        "model": name,
        "dataset": info.dataset,
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": round(result.seconds, 1),
        "epochs": config.epochs,
        "steps": result.steps,
        "reference": published.get("reference"),
        "config": config.to_dict(),
    }
    if isinstance(data, TextCorpus):
        val = evaluate(model, data, "val", seq_len=config.seq_len)
        row |= {
            "val_perplexity": round(val["perplexity"], 3),
            "test_perplexity": test["perplexity"],
        }
        target = published.get("target_perplexity", 6.0)
        value, label, unit = val["perplexity"], f"{name} validation perplexity", ""
        passed = value < target
    else:
        error = 100.0 * (1.0 - test["accuracy"])
        row["test_error_percent"] = round(error, 2)
        row["published_error_percent"] = published.get("test_error")
        target = QUICK_TARGET if quick else published.get("target_error", 1.0)
        value, label, unit = error, f"{name} test error", "%"
        if quick:
            label += f" (quick, {QUICK_EPOCHS} epochs; not the published target)"
        passed = value <= target
    row["target"] = target
    return row, check(label, round(value, 3), target, unit, passed)


def section(rows: list[dict[str, Any]], machine: str) -> str:
    table = []
    for r in rows:
        if "test_error_percent" in r:
            got, pub = f"{r['test_error_percent']:.2f}%", r["published_error_percent"]
            pub_s = f"{pub:.2f}%" if pub is not None else "-"
            target = f"<= {r['target']:.2f}%"
        else:
            got, pub_s, target = f"val ppl {r['val_perplexity']:.2f}", "-", f"< {r['target']:g}"
        status = "yes" if r["passed"] else "**no**"
        seconds, epochs = f"{r['seconds']:.0f} s", f"{r['epochs']} epochs"
        load = r.get("load_average")
        load_s = "-" if load is None else f"{load:.1f}"
        table.append(
            [r["model"], f"{r['params']:,}", got, pub_s, target, status, seconds, load_s, epochs]
        )
    headers = [
        "model",
        "params",
        "ours",
        "published",
        "target",
        "met",
        "train time",
        "load",
        "schedule",
    ]
    return "\n".join(
        [
            "## Baselines: training the zoo from scratch",
            "",
            f"`python benchmarks/baselines.py` on {machine}: each model trained once with "
            "`default_train_config(model)` (MNIST: 55k training images, 5k held out for "
            "validation; test error on the 10k test images). Published figures: "
            "Han et al., NeurIPS 2015. *load* is the machine's 1-minute load average when the "
            "model finished: on 2 cores, a load well above 2 means other jobs shared the CPU and "
            "the training time is longer than on an idle machine.",
            "",
            markdown_table(headers, table),
            *(
                [
                    "",
                    "A load of '-' was not recorded: those rows come from an earlier full run on "
                    "this machine while other jobs shared it (load average about 8 to 12), so "
                    "their times are several times an idle machine's.",
                ]
                if any(r.get("load_average") is None for r in rows)
                else []
            ),
        ]
    )


def _model_part(name: str) -> Part:
    """The part that trains ``name`` from scratch: one row, one check."""

    def part(ctx: BenchContext) -> PartResult:
        if ctx.quick:
            print("quick run: few epochs, so the numbers are NOT the published targets", flush=True)
        print(f"== {name}", flush=True)
        row, result = run_model(name, ctx.quick, progress=not ctx.options.no_progress)
        row["passed"] = result["passed"]
        row["load_average"] = round(os.getloadavg()[0], 2)
        mark = "PASS" if result["passed"] else "FAIL"
        value = f"{result['value']}{result['unit']} (target {result['target']}{result['unit']})"
        print(f"{mark} {result['name']}: {value}, {row['seconds']} s", flush=True)
        extra = {"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
        return PartResult([row], [result], "", extra)

    return part


def _section(ctx: BenchContext, done: dict[str, dict[str, Any]]) -> str:
    m = machine_info()
    where = f"{m['cpu']}, {m['threads']} threads, load average {m['load_average']} at the end"
    return section([r for p in done.values() for r in p["rows"]], where)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    """One part per zoo model (``--parts``, or ``--models``): by default the models with
    published figures or targets, LeNet-300-100 alone with ``--quick``; a partial rerun keeps
    the other models' last rows. Exits 1 when a model misses its target."""
    # Must be set before torch loads OpenMP. On this 2-core machine shared with other jobs,
    # OpenMP threads spinning at barriers while their partner was descheduled made LeNet training
    # 17x slower with 2 threads than with 1; with passive waits 2 threads ran as fast as 1.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from modelzip.baselines import PUBLISHED
    from modelzip.models import list_models

    names = list(dict.fromkeys([*PUBLISHED, *list_models()]))
    return run_parts(
        "baselines", "Baselines", {n: _model_part(n) for n in names}, __doc__.splitlines()[0],
        argv, options=_options, section=_section, keep=True, threads=2,
        default_parts=list(PUBLISHED), quick_parts=["lenet300"], parts_aliases=["--models"],
        fail_on_missed=True,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
