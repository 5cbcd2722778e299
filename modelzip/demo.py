"""``modelzip demo``: the trained LeNet-300-100 through every registered method, in one table.

Each method runs with its registry example setting on the cached MNIST baseline, leaving the
classifier layer dense (as Han et al. and most quantization papers do), is fine-tuned for one
epoch, and is measured side by side with the baseline: test accuracy, stored parameters, saved
bytes, MACs and the measured CPU latency ratio (baseline time over compressed time, batch 64).
The latency is that of the *materialized* model (:func:`modelzip.deploy`: sparse,
int8 and binary kernels where they are measured faster), against the fp32 baseline in the same run.
Methods that have nothing to do on an MLP (convolution-only methods) run on LeNet-5 instead and
their row says so; so that a fresh demo stays within minutes, that LeNet-5 baseline is trained for
3 epochs only (about 99.2% instead of the full config's 99.4%).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from modelzip.api import compress, model_stats
from modelzip.core.atomic import write_text
from modelzip.core.registry import get_method, list_methods
from modelzip.core.selection import Select

HEADER = ("method", "model", "test acc", "params", "bytes", "compression", "MACs", "latency ratio")


def _row(method: str, model: str, stats: Any, base: Any) -> list[str]:
    ratio = base.latency_ms / stats.latency_ms if stats.latency_ms else float("nan")
    return [
        method,
        model,
        f"{100 * stats.accuracy:.2f}%",
        f"{stats.params:,}",
        f"{stats.size_bytes:,}",
        f"{base.size_bytes / stats.size_bytes:.1f}×",
        f"{stats.effective_macs:,}",
        f"{ratio:.2f}×",
    ]


def run_demo(out_dir: Path, *, quick: bool = False, progress: bool = True) -> list[list[str]]:
    """Run the demo, print the table and write ``out_dir/report.md``; returns the rows."""
    from rich.console import Console
    from rich.table import Table

    from modelzip.baselines import pretrained
    from modelzip.data import load_dataset
    from modelzip.kernels import materialize
    from modelzip.measure import measure_latency
    from modelzip.train import TrainConfig, default_train_config, evaluate

    console = Console(width=max(Console().width, 132))  # the table stays readable when piped
    start = time.perf_counter()
    torch.manual_seed(0)
    data = load_dataset("mnist")
    finetune = TrainConfig(epochs=1, lr=1e-3, optimizer="adam", schedule="cosine", seed=0)
    classifier = {"lenet300": "fc3", "lenet5": "fc2"}
    models: dict[str, Any] = {}
    bases: dict[str, Any] = {}

    def baseline(name: str) -> tuple[Any, Any]:
        if name not in models:
            console.print(f"[bold]baseline[/] {name} (trained once, then cached)")
            config = default_train_config(name)
            if name == "lenet5":
                config = config.replace(epochs=3)
            models[name] = pretrained(name, "mnist", config=config, progress=progress)
            sample = data.x_test[:64]
            bases[name] = model_stats(models[name], sample, data=data)
            # The anchor is materialized too, so that a ratio is compression, not memory layout.
            bases[name].latency_ms = measure_latency(materialize(models[name], sample)[0], sample)
        return models[name], bases[name]

    rows: list[list[str]] = []
    model, base = baseline("lenet300")
    rows.append(_row("(baseline)", "lenet300", base, base))
    for name in list_methods():
        spec = get_method(name)
        model_name = "lenet300"
        model, base = baseline(model_name)
        console.print(f"[bold]{name}[/] ({spec.family}): {spec.summary}")
        step = spec.example.replace(select=Select(exclude=(classifier[model_name],)))
        small, report = compress(model, [step], data, evaluate=False, measure=False)
        if not report.layers:
            model_name = "lenet5"
            model, base = baseline(model_name)
            step = spec.example.replace(select=Select(exclude=(classifier[model_name],)))
            small, report = compress(model, [step], data, evaluate=False, measure=False)
        if not report.layers:
            rows.append([name, model_name, "not applicable", "", "", "", "", ""])
            continue
        if not quick:
            from modelzip.train import train

            train(small, data, finetune, progress=progress)
        # Size, parameters and MACs are the stored compressed model's; accuracy and latency are
        # measured on its materialized form, which is what would be deployed.
        stats = model_stats(small.eval(), data.x_test[:64], measure=False)
        fast, _ = materialize(small, data.x_test[:64])
        stats.accuracy = evaluate(fast, data)["accuracy"]
        stats.latency_ms = measure_latency(fast, data.x_test[:64])
        rows.append(_row(name, model_name, stats, base))

    table = Table(title="modelzip demo: MNIST", title_justify="left")
    for h in HEADER:
        table.add_column(h, justify="left" if h in ("method", "model") else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    seconds = time.perf_counter() - start
    lines = [
        "# modelzip demo",
        "",
        "Trained baselines from the cache; each method with its registry example setting on "
        "every layer but the classifier, then "
        f"{'no' if quick else 'one epoch (Adam, lr 1e-3) of'} fine-tuning. "
        "Latency ratio: baseline time over compressed time, batch 64, median of repeated "
        "runs, measured in this run; both models are materialized (sparse, int8, binary "
        "kernels and channels-last layout where measured faster).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        f"Took {seconds:.0f} s on {torch.get_num_threads()} threads.",
        "",
    ]
    out = Path(out_dir) / "report.md"
    write_text(out, "\n".join(lines))
    console.print(f"written {out} in {seconds:.0f} s")
    return rows
