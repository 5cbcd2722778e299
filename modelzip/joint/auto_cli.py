"""``modelzip auto`` and ``modelzip sensitivity``: thin commands over :mod:`modelzip.joint.auto`
and :mod:`modelzip.joint.sensitivity` (registered by :mod:`modelzip.joint.command`)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from modelzip.core.errors import ModelzipError
from modelzip.model_source import MODEL_HELP


def _methods(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    return tuple(m for v in values for m in v.split(",") if m)


def _sensitivity_config(args: argparse.Namespace) -> Any:
    from modelzip.joint.sensitivity import SensitivityConfig

    changes: dict[str, Any] = {"validation_size": args.validation_size, "workers": args.workers}
    methods = _methods(args.methods)
    if methods:
        changes["methods"] = methods
    return SensitivityConfig(**changes)


def _runner(args: argparse.Namespace, store: Path) -> Any:
    """Candidates recorded in the sweep store ``store`` (a rerun resumes), evaluated here or,
    with ``--executor``, on a local pool or Ray (workers rebuild the model as given here)."""
    from modelzip.sweep.sensitivity_task import ModelSource, StoreRunner

    source = ModelSource.resolved(args.model, args.weights, args.dataset, args.validation_size)
    if args.executor is None and args.address is not None:
        raise ModelzipError("--address is for --executor ray")
    # --workers alone: the sweep's local pool, its candidates recorded as well.
    executor = "local" if args.executor is None and args.workers > 1 else args.executor
    return StoreRunner(
        source, store, executor=executor, workers=args.workers, address=args.address,
        progress=_bars(args),
    )  # fmt: skip


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from modelzip.model_source import dataset_for, load_model

    data = dataset_for(args.dataset, args.model)
    model = load_model(args.model, args.weights, args.dataset, progress=_bars(args), data=data)
    return model.eval(), data


def _bars(args: argparse.Namespace) -> bool:
    return not (args.json or args.quiet)


def _model_name(spec: str) -> str:
    return Path(spec).stem if Path(spec).suffix else spec


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from modelzip.command_output import print_json
    from modelzip.core.atomic import write_json
    from modelzip.joint.sensitivity import plot_sensitivity, run_sensitivity
    from modelzip.sweep.runner import STORE_NAME

    config = _sensitivity_config(args)
    model, data = _load(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = _runner(args, out / STORE_NAME)
    result = run_sensitivity(
        model, data, config, model_name=_model_name(args.model), progress=_bars(args),
        runner=runner,
    )  # fmt: skip
    write_json(out / "sensitivity.json", result.to_dict())
    plots = plot_sensitivity(result, out)
    files = [str(out / "sensitivity.json"), *map(str, plots)]
    if args.json:
        print_json({**result.to_dict(), "files": files, "resumed": runner.resumed})
        return 0
    print(f"baseline validation accuracy {result.baseline_accuracy:.4f}")
    if runner.resumed:
        print(f"{runner.resumed} candidates read back from {out / STORE_NAME}")
    for c in result.curves:
        points = ", ".join(f"{v:g}:{a:.3f}" for v, a in zip(c.values, c.accuracy, strict=True))
        print(f"{c.layer:>12} {c.method:<18} {c.knob}: {points}")
    print("wrote " + ", ".join(files))
    return 0


def cmd_auto(args: argparse.Namespace) -> int:
    from modelzip.api import model_device, sample_from
    from modelzip.command_output import print_json
    from modelzip.deploy import materialize
    from modelzip.joint.auto import AutoConfig, auto_compress
    from modelzip.joint.auto_families import FAMILIES
    from modelzip.joint.auto_trail import Trail
    from modelzip.joint.budget import parse_budget
    from modelzip.joint.run_dir import write_run_dir
    from modelzip.joint.sensitivity import run_sensitivity
    from modelzip.serialize import save
    from modelzip.sweep.auto_trail import StoreTrail
    from modelzip.sweep.runner import STORE_NAME
    from modelzip.train import evaluate

    budget = parse_budget(args.target)
    config = AutoConfig(
        families=_methods(args.families) or FAMILIES,
        family_evals=args.family_evals,
        search=args.search,
        max_drop=args.max_drop,
        budget_evals=args.budget_evals,
        accelerator=args.accelerator or "eyeriss",
        finetune_epochs=args.finetune_epochs,
        finetune_samples=args.finetune_samples,
        seed=args.seed,
        sensitivity=_sensitivity_config(args),
    )
    model, data = _load(args)
    sensitivity = None
    if "layer" in config.families and config.search == "greedy" and (args.run_dir or args.executor):
        # Through the sweep store: resumed from the run directory, or run on --executor.
        with tempfile.TemporaryDirectory() as scratch:
            store = Path(args.run_dir or scratch) / STORE_NAME
            store.parent.mkdir(parents=True, exist_ok=True)
            sensitivity = run_sensitivity(
                model, data, config.sensitivity, model_name=_model_name(args.model),
                progress=_bars(args), runner=_runner(args, store),
            )  # fmt: skip
    # With a run directory every candidate is recorded in its sweep store as it is measured, and
    # a rerun into the same directory builds only the candidates it does not hold yet.
    trail = StoreTrail(Path(args.run_dir) / STORE_NAME) if args.run_dir else Trail()
    with trail:
        result = auto_compress(model, data, budget, config, model_name=_model_name(args.model),
                               progress=_bars(args), trail=trail,
                               sensitivity=sensitivity)  # fmt: skip
    # Saved deployed, as compress saves: the file keeps the compact layers and the chosen forms.
    deployed, _ = materialize(result.model, sample_from(data, model_device(result.model)))
    save(deployed, args.out)
    summary = {
        **result.summary(),
        "test_accuracy": float(evaluate(deployed, data)["accuracy"]),
        "baseline_test_accuracy": float(evaluate(model, data)["accuracy"]),
        "out": str(args.out),
        "file_bytes": Path(args.out).stat().st_size,
    }
    if args.run_dir:
        files = write_run_dir(result, args.run_dir)
        if args.accelerator or budget.needs_accelerator:
            files.append(_write_estimate(result, data, args.run_dir, config.accelerator))
        summary["files"] = [str(f) for f in files]
    if args.json:
        print_json(summary)
        return 0
    _print_auto(summary)
    return 0


def _write_estimate(result: Any, data: Any, run_dir: str, accelerator: str) -> Path:
    from modelzip.core.atomic import write_json
    from modelzip.core.counting import collect_workloads
    from modelzip.hardware import estimate
    from modelzip.joint.sensitivity import validation_split

    path = Path(run_dir) / "estimate.json"
    sample = validation_split(data, 1)[0]
    write_json(path, estimate(collect_workloads(result.model, sample), accelerator).to_dict())
    return path


def _print_auto(s: dict[str, Any]) -> None:
    from rich.table import Table

    from modelzip.command_output import rich_console

    table = Table(title=f"auto: {s['model']}, budget {s['budget']['kind']}", title_justify="left")
    for c in ("layer", "method", "knob", "value"):
        table.add_column(c)
    for row in s["settings"]:
        table.add_row(
            row["layer"], row["method"], str(row["knob"] or "-"), str(row["value"] or "-")
        )
    rich_console().print(table)
    unit = s["budget"]["unit"]
    print(
        f"cost {s['cost']:,.6g} {unit} (budget {s['budget']['limit']:,.6g}, baseline "
        f"{s['baseline_cost']:,.6g}); validation accuracy {s['accuracy']:.4f} "
        f"(baseline {s['baseline_accuracy']:.4f}, drop {s['drop_points']:.2f} points); "
        f"test accuracy {s['test_accuracy']:.4f}; {s['explored']} candidates explored; "
        f"chosen family {s['family']}; {s['evaluated']} built, {s['resumed']} from the trail"
    )
    for u in s.get("unavailable", []):
        print(f"unavailable: {'+'.join(u['methods'])}: {u['reason']}")
    print(f"saved {s['out']} ({s['file_bytes']:,} bytes)")
    for f in s.get("files", []):
        print(f"wrote {f}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--weights", help="weights file (default for zoo models: the cached baseline)")
    p.add_argument("--dataset", help="data set name or .npz file (default: the model's own)")
    p.add_argument(
        "--methods",
        nargs="+",
        help="methods with a knob (svd, tucker2, cp, quantize_weights, magnitude_prune); "
        "default svd quantize_weights magnitude_prune",
    )
    p.add_argument(
        "--validation-size",
        type=int,
        default=2000,
        help="validation images, held out of the training set (default 2000)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="processes evaluating sensitivity candidates"
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        help="where sensitivity candidates run: a local process pool or Ray (default: here, "
        "or a local pool with --workers > 1); each is recorded in the sweep store as it ends",
    )
    p.add_argument("--address", help="Ray cluster address for --executor ray (default: local)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register_auto_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``modelzip sensitivity`` and ``modelzip auto`` to ``sub``."""
    p = sub.add_parser(
        "sensitivity", help="per-layer accuracy against rank, bit-width and sparsity"
    )
    _common(p)
    p.add_argument("--out", required=True, help="run directory for sensitivity.json and plots")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("auto", help="compress to a size, MACs, latency or energy budget")
    _common(p)
    p.add_argument(
        "--target",
        required=True,
        help="budget: size=50kB, macs=2M, latency=1.5ms, energy=3uJ or cycles=1e6",
    )
    p.add_argument(
        "--max-drop", type=float, default=0.5, help="tolerated accuracy drop, points (0.5)"
    )
    p.add_argument("--search", choices=["greedy", "evolution"], default="greedy")
    p.add_argument(
        "--accelerator", help="preset or spec YAML for energy and cycles budgets (eyeriss)"
    )
    p.add_argument(
        "--families",
        nargs="+",
        help="what is searched (default all): layer (one --methods method per layer), "
        "channel_prune, int8 (static), channel_prune+int8, prune+quantize, decompose+quantize",
    )
    p.add_argument(
        "--family-evals",
        type=int,
        default=3,
        help="whole-model candidates per family evaluated for accuracy, mildest within budget (3)",
    )
    p.add_argument("--budget-evals", type=int, default=30, help="candidates evaluated (30)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="fine-tune epochs (1)")
    p.add_argument(
        "--finetune-samples", type=int, default=10000, help="fine-tune training images (10000)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help="output model file (.mzip)")
    p.add_argument(
        "--run-dir",
        help="write points.json, trail.json, sensitivity.json, recipe.yaml, plots; the sweep "
        "store sweep.sqlite there makes a rerun resume",
    )
    p.set_defaults(func=cmd_auto)
