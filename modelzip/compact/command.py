"""``modelzip nas``: architecture search over the compact blocks from the shell.

Regularized evolution (or the random-search baseline) over :class:`BlockSpace` or
:class:`HierarchicalSpace`, each candidate trained briefly on held-out-split proxy data and
rewarded against optional parameter, latency and energy targets (hardware-aware search). The
search checkpoints after every evaluation; rerunning the same command resumes it.
``--algorithm darts`` runs the differentiable cell search instead (:func:`darts_search`, its
budget set by ``--epochs`` and ``--train-size``; checkpointed after every epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nas",
        help="architecture search over compact blocks (evolution or random; resumable)",
        description=__doc__.splitlines()[0] + " --executor local|ray evaluates a random search in "
        "parallel as sweep tasks.",
    )
    p.add_argument("--dataset", default="mnist", help="data set name or .npz file")
    p.add_argument("--space", choices=["block", "hierarchical"], default="block")
    p.add_argument(
        "--algorithm", choices=["evolution", "random", "darts"], default="evolution",
        help="evolution or random over --space; darts: the differentiable cell search, its "
        "budget --epochs of supernet training on --train-size images (default: evolution)",
    )  # fmt: skip
    p.add_argument("--population", type=int, default=8, help="evolution's population")
    p.add_argument("--cycles", type=int, default=16, help="evolution's mutation cycles")
    p.add_argument("--trials", type=int, default=24, help="random search's evaluations")
    p.add_argument("--max-params", type=int, default=50_000, help="reject larger candidates")
    p.add_argument("--train-size", type=int, default=10_000, help="proxy training images")
    p.add_argument("--val-size", type=int, default=5_000, help="held-out validation images")
    p.add_argument("--epochs", type=int, default=1, help="proxy training epochs")
    p.add_argument("--energy-target", type=float, help="hardware-aware: Eyeriss energy target")
    p.add_argument("--latency-target-ms", type=float, help="measured CPU latency target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        help="random search only: evaluate in parallel as sweep tasks (default: in this process)",
    )
    p.add_argument("--workers", type=int, help="parallel evaluations (with --executor)")
    p.add_argument("--address", help="Ray cluster address (with --executor ray)")
    p.add_argument("--out", required=True, help="run directory (nas.json; the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the best entry as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_nas)


def cmd_nas(args: argparse.Namespace) -> int:
    from modelzip.compact.nas import (
        BlockSpace,
        HierarchicalSpace,
        SearchObjective,
        arch_key,
        random_search,
        regularized_evolution,
    )
    from modelzip.core.errors import ConfigError
    from modelzip.model_source import dataset_for
    from modelzip.progress import progress_bar

    data = dataset_for(args.dataset)
    if args.algorithm == "darts":
        return _darts(args, data)
    shape, classes = tuple(data.input_shape), data.num_classes
    space_cls = BlockSpace if args.space == "block" else HierarchicalSpace
    space = space_cls(input_shape=shape, num_classes=classes)
    objective = SearchObjective(
        max_params=args.max_params,
        train_size=args.train_size,
        val_size=args.val_size,
        epochs=args.epochs,
        seed=args.seed,
        energy_target=args.energy_target,
        latency_target_ms=args.latency_target_ms,
    )
    for flag, low in (("population", 1), ("cycles", 0), ("trials", 1)):
        if getattr(args, flag) < low:
            raise ConfigError(f"--{flag}={getattr(args, flag)} is out of range; allowed >= {low}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.json"
    total = args.population + args.cycles if args.algorithm == "evolution" else args.trials

    def evaluate(arch):
        return objective(space.build(arch), data, arch_key(arch))

    if args.executor is not None:
        if args.algorithm != "random":
            raise ConfigError(
                "--executor runs the candidates in parallel, which only --algorithm random allows "
                "(evolution's next candidate depends on the last result)"
            )
        from modelzip.compact.nas.parallel import parallel_random_search

        result = parallel_random_search(
            args.space, args.dataset, data, objective, trials=args.trials, seed=args.seed,
            out=out, executor=args.executor, workers=args.workers, address=args.address,
            progress=not (args.quiet or args.json),
        )  # fmt: skip
        return _finish(args, out, result)

    done = 0
    if checkpoint.is_file():  # a resumed search: its finished evaluations are not redone
        with contextlib.suppress(ValueError, KeyError, TypeError):
            done = len(json.loads(checkpoint.read_text())["history"])
    with progress_bar(f"nas ({args.algorithm})", total, not (args.quiet or args.json)) as bar:
        bar.advance(min(done, total))

        def advance(entry, n):
            bar.advance()

        if args.algorithm == "evolution":
            result = regularized_evolution(
                space, evaluate, population=args.population, sample_size=min(3, args.population),
                cycles=args.cycles, seed=args.seed, checkpoint=checkpoint, callback=advance,
            )  # fmt: skip
        else:
            result = random_search(
                space, evaluate, trials=args.trials, seed=args.seed, checkpoint=checkpoint,
                callback=advance,
            )  # fmt: skip
    return _finish(args, out, result)


def _finish(args: argparse.Namespace, out: Path, result) -> int:
    from modelzip.command_output import print_json
    from modelzip.core.atomic import write_json

    summary = {"space": args.space, "dataset": args.dataset, **result.to_dict()}
    write_json(out / "nas.json", summary)
    best = result.best
    if args.json:
        print_json({"best": best, "evaluations": len(result.history), "out": str(out)})
        return 0
    m = best["metrics"]
    print(
        f"best of {len(result.history)}: {best['arch']}\n"
        f"  proxy accuracy {100 * m['accuracy']:.2f}%, {m['params']:,} parameters, "
        f"score {m['score']:.4f}; written to {out / 'nas.json'}"
    )
    return 0


def _darts(args: argparse.Namespace, data) -> int:
    """DARTS on ``--train-size`` images for ``--epochs`` epochs; the genotype to nas.json."""
    from modelzip.command_output import print_json
    from modelzip.compact.nas import darts_search, genotype_summary
    from modelzip.core.atomic import write_json
    from modelzip.core.errors import ConfigError
    from modelzip.progress import progress_bar

    if args.executor is not None:
        raise ConfigError("--executor runs the candidates in parallel, which only --algorithm "
                          "random allows (DARTS trains one supernet)")  # fmt: skip
    for flag, low in (("epochs", 1), ("train_size", 2)):
        if getattr(args, flag) < low:
            name = "--" + flag.replace("_", "-")
            raise ConfigError(f"{name}={getattr(args, flag)} is out of range; allowed >= {low}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar("nas (darts)", args.epochs, not (args.quiet or args.json)) as bar:
        result = darts_search(
            data, epochs=args.epochs, train_size=args.train_size, seed=args.seed,
            checkpoint=out / "darts.pt", callback=lambda record: bar.advance(),
        )  # fmt: skip
    summary = {"algorithm": "darts", "dataset": args.dataset, **dataclasses.asdict(result)}
    write_json(out / "nas.json", summary)
    accuracy = result.history[-1]["val_accuracy"] if result.history else None
    if args.json:
        print_json({"genotype": result.genotype, "val_accuracy": accuracy, "out": str(out)})
        return 0
    print(f"darts genotype: {genotype_summary(result.genotype)}")
    if accuracy is not None:
        print(f"  supernet validation accuracy {100 * accuracy:.2f}%")
    print(f"  written to {out / 'nas.json'}")
    return 0
