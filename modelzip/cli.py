"""The ``modelzip`` command: thin subcommands over the public API.

Every error a user can cause ends as one line ``error: ...`` on stderr and exit status 2, never a
traceback. ``--json`` prints exactly one JSON object on stdout (and silences progress bars).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from modelzip.command_output import print_json, rich_console
from modelzip.core.errors import ConfigError, ModelzipError
from modelzip.model_source import MODEL_HELP, dataset_for, load_model, sample_batch, zoo_kwargs
from modelzip.recipe import MAX_RECIPE_STEPS

STAT_KEYS = ("accuracy", "params", "size_bytes", "macs", "latency_ms")

# Subcommands that live with their family: each module has ``register(sub)``, which adds its
# parsers; heavy imports (onnx, ray, matplotlib) stay inside the command functions so that
# ``modelzip --help`` stays fast.
EXTENSIONS = (
    "modelzip.joint.command",
    "modelzip.reporting.command",
    "modelzip.export.command",
    "modelzip.sweep.command",
    "modelzip.compact.command",
)


def _stats_json(stats: Any) -> dict[str, Any]:
    data = stats.to_dict()
    return {**{k: data.get(k) for k in STAT_KEYS}, **data}


# --- subcommands ---------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from modelzip.core.registry import get_method, list_methods
    from modelzip.data import dataset_info, list_datasets
    from modelzip.hardware.presets import accelerator_description, list_accelerators
    from modelzip.models import list_models, model_info

    methods = [
        {"name": n, "family": get_method(n).family, "summary": get_method(n).summary}
        for n in list_methods()
    ]
    models = [{"name": n, "description": model_info(n).description} for n in list_models()]
    datasets = [{"name": n, "description": dataset_info(n).description} for n in list_datasets()]
    accelerators = [
        {"name": n, "description": accelerator_description(n)} for n in list_accelerators()
    ]
    if args.json:
        print_json(
            {
                "methods": methods,
                "models": models,
                "datasets": datasets,
                "accelerators": accelerators,
            }
        )
        return 0
    from rich.table import Table

    console = rich_console()
    for title, rows, cols in (
        ("methods", methods, ("name", "family", "summary")),
        ("models", models, ("name", "description")),
        ("datasets", datasets, ("name", "description")),
        ("accelerators", accelerators, ("name", "description")),
    ):
        table = Table(title=title, title_justify="left")
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*(str(r[c]) for c in cols))
        console.print(table)
    return 0


DATASET_HELP = (
    "data set name, .npz file, folder of class subfolders, or token data (.npy ids, .txt with "
    "--tokenizer)"
)


def cmd_train(args: argparse.Namespace) -> int:
    from modelzip.api import check_data_fits, model_stats
    from modelzip.models import list_models, resolve_model
    from modelzip.serialize import save
    from modelzip.train import TrainConfig, default_train_config, train

    data = dataset_for(args.dataset, args.model, getattr(args, "image_size", None))
    config = default_train_config(args.model) if args.model in list_models() else TrainConfig()
    names = ("epochs", "lr", "seed", "grad_compress", "grad_bits", "dgc_ratio")
    changes = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    for flag, scheme in (("grad_bits", "qsgd"), ("dgc_ratio", "dgc")):
        if getattr(args, flag) is not None and args.grad_compress != scheme:
            # A knob of another scheme would be ignored silently.
            raise ConfigError(
                f"--{flag.replace('_', '-')} applies to --grad-compress {scheme}, "
                f"not {args.grad_compress or 'no compression'}"
            )
    config = config.replace(**changes)
    # The initial weights come from the seed too: torch seeds each process randomly, so the same
    # command would otherwise train a different model every time (and a resumed run could not
    # be compared with an uninterrupted one).
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = resolve_model(args.model, **zoo_kwargs(args.model, data))
    check_data_fits(model, data)
    result = train(
        model, data, config, progress=not (args.json or args.quiet),
        checkpoint_dir=args.checkpoint_dir,
    )  # fmt: skip
    compression = result.grad_compression
    if compression is not None and compression["rank"] != 0:
        return 0  # under torchrun the ranks end with the same weights: rank 0 saves them
    save(model, args.out)
    stats = model_stats(model, data=data, measure=False)
    out = {
        **_stats_json(stats), "out": str(args.out), "seconds": result.seconds,
        "grad_compression": compression,
    }  # fmt: skip
    if args.json:
        print_json(out)
        return 0
    print(f"test accuracy {stats.accuracy:.4f} after {result.seconds:.0f} s; saved {args.out}")
    if compression is not None:
        print(_compression_line(compression))
    return 0


def _compression_line(c: dict[str, Any]) -> str:
    if not c["ratio"]:
        return f"gradients: {c['scheme']} over {c['world_size']} process(es)"
    return (
        f"gradients: {c['scheme']} over {c['world_size']} process(es), "
        f"{c['payload_bytes_per_step']:,.0f} bytes per step per process instead of "
        f"{c['fp32_bytes_per_step']:,.0f} in float32 ({c['ratio']:.1f}x smaller)"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from modelzip.api import model_device, model_stats, sample_from
    from modelzip.deploy import is_deployed, materialize

    data = dataset_for(args.dataset, args.model, getattr(args, "image_size", None))
    quiet = args.json or args.quiet
    model = load_model(args.model, args.weights, args.dataset, progress=not quiet, data=data)
    sample = sample_from(data, model_device(model), model=model)
    extra: dict[str, Any] = {}
    if sample is not None and not is_deployed(model):
        # A file saved in its trainable form (modelzip deep, --no-deploy) runs as it would be
        # deployed: each compressed layer in its fastest correct form on this CPU.
        model, chosen = materialize(model, sample)
        extra["deployed_on_load"] = [row for row in chosen.rows() if row["form"]]
    stats = model_stats(model, sample, data=data, measure=False)
    if not args.no_latency and sample is not None:
        extra.update(_latency_against_dense(model, sample, stats))
    if args.json:
        print_json({**_stats_json(stats), **extra})
    else:
        _print_stats_table("evaluation", [("model", stats)])
        if extra.get("speedup") is not None:
            print(f"speedup {extra['speedup']:.2f}× over the dense original (timed side by side)")
    return 0


def _latency_against_dense(model: Any, sample: Any, stats: Any) -> dict[str, Any]:
    """Time ``model`` beside its dense original (rebuilt from the file's source record),
    interleaved and warm, into ``stats``; the original's latency and the speedup are returned.
    A model that is not compressed is its own original: it is timed alone."""
    from modelzip.core.counting import module_bytes
    from modelzip.deploy import dense_anchor, time_against
    from modelzip.measure import latency_timing
    from modelzip.models.registry import SOURCE_ATTR, build_from_source

    source = getattr(model, SOURCE_ATTR, None)
    reference = build_from_source(source).to(sample.device) if source else None
    if reference is None or module_bytes(reference) == module_bytes(model):
        fast, dense = latency_timing(model, sample), None
    else:
        dense, fast = time_against(dense_anchor(reference, sample), model, sample)
    stats.latency_ms = fast.ms
    stats.latency_range_ms = [fast.min * 1e3, fast.max * 1e3]
    stats.first_call_ms = None if fast.cold is None else fast.cold * 1e3
    stats.latency_batch = int(sample.shape[0])
    if dense is None:
        return {"dense_latency_ms": None, "speedup": None}
    return {"dense_latency_ms": dense.ms, "speedup": dense.median / fast.median}


def cmd_inspect(args: argparse.Namespace) -> int:
    from modelzip.core.counting import collect_workloads, layer_rows

    model = load_model(args.model, args.weights, pretrained=False)
    sample = _inspect_sample(args, model)
    workloads = collect_workloads(model, sample)
    rows = layer_rows(workloads)
    from modelzip.api import model_stats

    stats = model_stats(model, sample, measure=not args.no_latency)
    if args.json:
        print_json(
            {
                **_stats_json(stats),
                "layers": [r.to_dict() for r in rows],
                "workloads": [w.to_dict() for w in workloads],
            }
        )
        return 0
    from rich.table import Table

    table = Table(title=f"{args.model}: batch {sample.shape[0]}", title_justify="left")
    for c in ("layer", "type", "params", "MACs", "bits", "sparsity", "weight bytes", "act bytes"):
        table.add_column(c, justify="left" if c in ("layer", "type") else "right")
    for r in rows:
        table.add_row(
            r.name,
            r.module_type,
            f"{r.params:,}",
            f"{r.macs:,}",
            str(r.weight_bits),
            f"{r.weight_sparsity:.1%}",
            f"{r.weight_bytes:,}",
            f"{r.activation_bytes:,}",
        )
    table.add_row(
        "total",
        "",
        f"{stats.params:,}",
        f"{stats.macs:,}",
        "",
        "",
        f"{stats.size_bytes:,}",
        "",
        style="bold",
    )
    rich_console().print(table)
    return 0


def _inspect_sample(args: argparse.Namespace, model):
    """A batch of ``--input-shape``, or of the model's own input shape (zoo models know it)."""
    return sample_batch(model, args.input_shape, args.batch)


def cmd_compress(args: argparse.Namespace) -> int:
    from modelzip.api import compress
    from modelzip.recipe import Recipe
    from modelzip.serialize import save
    from modelzip.train import TrainConfig

    recipe = Recipe.load(args.recipe, max_steps=args.max_steps)
    data = dataset_for(args.dataset, args.model, getattr(args, "image_size", None))
    quiet = args.json or args.quiet
    model = load_model(args.model, args.weights, args.dataset, progress=not quiet, data=data)
    finetune = None
    if args.finetune_epochs:
        finetune = TrainConfig(
            epochs=args.finetune_epochs, lr=args.finetune_lr, optimizer="adam", schedule="cosine"
        )
    small, report = compress(
        model,
        recipe,
        data,
        finetune=finetune,
        measure=not args.no_latency,
        progress=not quiet,
        deploy=not args.no_deploy,
    )
    save(small, args.out)
    if args.run_dir:
        _write_run_dir(Path(args.run_dir), small, report)
    if args.json:
        print_json(
            {
                "before": _stats_json(report.before),
                "after": _stats_json(report.after),
                **{k: v for k, v in report.to_dict().items() if k not in ("before", "after")},
                "out": str(args.out),
                "file_bytes": Path(args.out).stat().st_size,
                "run_dir": args.run_dir,
            }
        )
        return 0
    _print_stats_table("compress", [("before", report.before), ("after", report.after)])
    for s in report.skipped:
        print(f"skipped {s.name} ({s.method}): {s.reason}")
    for row in report.deployment:
        print(_deployed_line(row))
    if report.deploy_note:
        print(report.deploy_note)
    if report.speedup is not None:
        print(f"speedup {report.speedup:.2f}× over the dense original (timed side by side)")
    print(f"saved {args.out} ({Path(args.out).stat().st_size:,} bytes)")
    return 0


def _write_run_dir(run_dir: Path, model, report) -> None:
    """``report.json``, ``model.mzip`` and ``estimate.json`` (Eyeriss) for ``modelzip report``."""
    from modelzip.core.atomic import write_json
    from modelzip.core.counting import collect_workloads
    from modelzip.hardware import estimate
    from modelzip.serialize import save

    write_json(run_dir / "report.json", report.to_dict())
    save(model, run_dir / "model.mzip")
    sample = _sample_from_source(model)
    if sample is not None:
        workloads = collect_workloads(model, sample)
        write_json(run_dir / "estimate.json", estimate(workloads, "eyeriss").to_dict())


def _sample_from_source(model):
    """One input of the shape the model was built for (None outside the zoo: the estimate is
    skipped)."""
    from modelzip.models.shapes import sample_input

    return sample_input(model)


def _deployed_line(row: dict[str, Any]) -> str:
    """One layer of the deployment: the classes and, where it is not the class's own or plain
    dense code, the kernel it runs on (several engines run an ``Int8Linear``)."""
    kernel = str(row.get("kernel") or "")
    on = f" on {kernel}" if kernel not in ("", "unchanged", "dense") else ""
    return f"deployed {row['name']}: {row['before']} -> {row['after']}{on} ({row['reason']})"


def _print_stats_table(title: str, rows: list[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in ("", "accuracy", "params", "bytes", "MACs (nonzero)", "latency ms"):
        table.add_column(c, justify="right")
    for name, s in rows:
        table.add_row(
            name,
            "-" if s.accuracy is None else f"{s.accuracy:.4f}",
            f"{s.params:,}",
            f"{s.size_bytes:,}",
            "-" if s.effective_macs is None else f"{s.effective_macs:,}",
            "-" if s.latency_ms is None else f"{s.latency_ms:.3f}",
        )
    rich_console().print(table)


def _estimate_sample(args: argparse.Namespace, model):
    """``--dataset``: the first ``--batch`` test images, so the measured activation statistics
    are those of real data; else the sample ``inspect`` runs."""
    if not args.dataset:
        return _inspect_sample(args, model)
    data = dataset_for(args.dataset, args.model)
    x = getattr(data, "x_test", None)
    if x is None:
        raise ModelzipError(f"estimate --dataset needs an image data set; {args.dataset!r} is not")
    return x[: max(1, args.batch)]


def cmd_estimate(args: argparse.Namespace) -> int:
    from modelzip.core.activation_stats import measured_workloads
    from modelzip.hardware import cli_estimate, render_table
    from modelzip.hardware.command import needs_model

    workloads = None
    if needs_model(args.model, args.topology):
        model = load_model(args.model, args.weights, pretrained=False)
        # The sample also measures each layer's zero activations and activation bits.
        workloads = measured_workloads(model, _estimate_sample(args, model))
    result = cli_estimate(vars(args) | {"model_or_file": args.model}, workloads=workloads)
    if args.json:
        print_json(result)
    else:
        print(render_table(result))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from modelzip.demo import run_demo

    run_demo(Path(args.out_dir), quick=args.quick, progress=not args.quiet)
    return 0


# --- parser ----------------------------------------------------------------------------------


#: Options several subcommands take, worded once.
_SHARED_FLAGS = {
    "--no-latency": "skip the latency measurement",
    "--json": "print JSON",
    "--quiet": "no progress bar",
}


def _flags(p: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        p.add_argument(name, action="store_true", help=_SHARED_FLAGS[name])


def _model_command(
    sub: argparse._SubParsersAction, name: str, help: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """A subcommand whose first argument is a model."""
    p = sub.add_parser(name, help=help)
    p.add_argument("model", help=MODEL_HELP)
    p.set_defaults(func=func)
    return p


def _dataset_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--dataset`` (its default named in the help) and ``--image-size`` for image folders."""
    p.add_argument("--dataset", help=DATASET_HELP + (f" (default: {default})" if default else ""))
    p.add_argument(
        "--image-size", type=int, metavar="N",
        help="for a folder of images: resize and center-crop to N x N (default 224)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelzip", description="Make neural networks smaller and faster, and measure it."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="methods, models, data sets and accelerator presets")
    _flags(p, "--json")
    p.set_defaults(func=cmd_list)

    p = _model_command(sub, "train", "train a model and save it", cmd_train)
    _dataset_args(p, default="the model's own")
    p.add_argument("--epochs", type=int, help="epochs (default: the model's tuned setting)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument(
        "--grad-compress", choices=["terngrad", "qsgd", "onebit", "dgc"],
        help="average the gradients through this compressing DDP hook (one process, or each "
        "process under torchrun)",
    )  # fmt: skip
    p.add_argument("--grad-bits", type=int, help="QSGD's bits per gradient value, 2-8 (default 4)")
    p.add_argument(
        "--dgc-ratio", type=float, help="DGC's fraction of gradients sent, (0, 1] (default 0.01)"
    )
    p.add_argument("--out", required=True, help="output file (.mzip)")
    p.add_argument(
        "--checkpoint-dir",
        help="save training state there after every epoch; rerunning resumes from it",
    )
    _flags(p, "--json", "--quiet")

    p = _model_command(sub, "eval", "test accuracy, size, MACs and latency", cmd_eval)
    p.add_argument("--weights", help="weights file (.safetensors, .pt, .mzip)")
    _dataset_args(p)
    _flags(p, "--no-latency", "--json", "--quiet")

    p = _model_command(sub, "inspect", "per-layer parameters, MACs and bytes", cmd_inspect)
    p.add_argument("--weights", help="weights file")
    p.add_argument("--input-shape", help="one input's shape, e.g. 1,28,28 (zoo models know it)")
    p.add_argument("--batch", type=int, default=1, help="batch size for the counts (default 1)")
    _flags(p, "--no-latency", "--json")

    p = _model_command(sub, "compress", "apply a recipe, fine-tune, save", cmd_compress)
    p.add_argument("--weights", help="weights file (default for zoo models: the cached baseline)")
    p.add_argument("--recipe", required=True, help="recipe YAML: a list of {method: ..., ...}")
    p.add_argument(
        "--max-steps", type=int, default=MAX_RECIPE_STEPS, metavar="N",
        help=f"refuse a recipe of more steps than this (default {MAX_RECIPE_STEPS})",
    )  # fmt: skip
    _dataset_args(p, default="the model's own")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs")
    p.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--out", required=True, help="output file (.mzip)")
    _flags(p, "--no-latency")
    p.add_argument(
        "--no-deploy", action="store_true",
        help="keep the trainable form (default: each layer in its fastest executable form on "
        "this CPU, measured; the file stays compact and loads deployed)",
    )  # fmt: skip
    p.add_argument("--run-dir", help="also write report.json, model.mzip, estimate.json here")
    _flags(p, "--json", "--quiet")

    p = sub.add_parser("estimate", help="cycles, energy and area on a modelled accelerator")
    p.add_argument(
        "model", nargs="?", help=MODEL_HELP + ", or a SCALE-Sim topology .csv (or give --topology)"
    )
    p.add_argument("--weights", help="weights file")
    p.add_argument(
        "--accelerator",
        default="eyeriss",
        help="preset name (tpu, eyeriss, os, stripes, bitfusion ...) or a spec YAML",
    )
    p.add_argument("--dataflow", choices=["os", "ws", "is", "rs"], help="default: the spec's")
    p.add_argument("--topology", help="a SCALE-Sim topology CSV instead of a model")
    p.add_argument("--scalesim-config", help="a SCALE-Sim .cfg file instead of --accelerator")
    p.add_argument("--search", choices=["energy", "latency"], help="search mappings per layer")
    p.add_argument("--input-shape", help="one input's shape, e.g. 1,28,28 (zoo models know it)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument(
        "--dataset",
        help="measure activation sparsity on the first --batch test images of this data set "
        "(default: the sample of --input-shape)",
    )
    _flags(p, "--json")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("demo", help="LeNet-300-100 on MNIST through every method")
    p.add_argument("--out-dir", default="out/demo", help="where report.md goes")
    p.add_argument("--quick", action="store_true", help="less fine-tuning, fewer timing repeats")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    for module_name in EXTENSIONS:
        import_module(module_name).register(sub)
    _add_trust_flag(sub)
    _add_max_classes_flag(sub)
    return parser


TRUST_HELP = (
    "allow a package.module:factory model (named here or in a saved file) to call a function "
    "not registered with @modelzip.models.model_factory and to import a module outside the "
    "installed packages; that runs its code, so only for code you trust"
)


NONFINITE_HELP = "load a model file whose weights hold NaN or infinite values (refused by default)"


def _add_trust_flag(sub: argparse._SubParsersAction) -> None:
    """``--trust-remote-code`` on every subcommand that takes a model (argparse lists a parser's
    arguments only in ``_actions``)."""
    for p in sub.choices.values():
        dests = {a.dest for a in p._actions}
        if "model" in dests and "trust_remote_code" not in dests:
            p.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
            p.add_argument("--allow-nonfinite", action="store_true", help=NONFINITE_HELP)


MAX_CLASSES_HELP = (
    "refuse an .npz data set with more classes than this (default 100000): a model fitted to "
    "it gets a classifier head that wide"
)


TOKENIZER_HELP = (
    "a local Hugging Face tokenizer directory to tokenize a .txt --dataset with (never downloaded)"
)


def _add_max_classes_flag(sub: argparse._SubParsersAction) -> None:
    """``--max-classes`` on every subcommand that takes ``--dataset``; :func:`main` applies it to
    every data set the command loads (:func:`modelzip.data.npz.class_limit`)."""
    for p in sub.choices.values():
        dests = {a.dest for a in p._actions}
        if "dataset" in dests and "max_classes" not in dests:
            p.add_argument("--max-classes", type=int, metavar="N", help=MAX_CLASSES_HELP)
        if "dataset" in dests and "tokenizer" not in dests:
            p.add_argument("--tokenizer", metavar="DIR", help=TOKENIZER_HELP)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from modelzip.data.npz import class_limit
    from modelzip.data.tokens import tokenizer_dir
    from modelzip.models.registry import trusting_remote_code
    from modelzip.serialize import allowing_nonfinite

    try:
        with (
            trusting_remote_code(getattr(args, "trust_remote_code", False)),
            allowing_nonfinite(getattr(args, "allow_nonfinite", False)),
            class_limit(getattr(args, "max_classes", None)),
            tokenizer_dir(getattr(args, "tokenizer", None)),
        ):
            return int(args.func(args) or 0)
    except ModelzipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
