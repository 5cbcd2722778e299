"""CLI subcommands of this family (registered by :mod:`modelzip.cli`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this family's subcommands to ``sub``."""
    from modelzip.joint.auto_cli import register_auto_commands

    register_auto_commands(sub)
    _register_deep(sub)


# --- modelzip deep: Deep Compression end to end ----------------------------------------------


def _register_deep(sub: argparse._SubParsersAction) -> None:
    from modelzip.model_source import MODEL_HELP

    p = sub.add_parser(
        "deep",
        help="Deep Compression: prune, share weights by k-means, Huffman-code (Han et al. 2016)",
        description="Prune, retrain, share weights by k-means, fine-tune the centroids and "
        "Huffman-code the model; writes RUN_DIR/model.mzip (whose size is the one reported) and "
        "RUN_DIR/deep_compression.json (sizes and accuracy after each stage).",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--dataset", help="data set (default: the model's)")
    p.add_argument("--weights", help="weights to load into the model")
    p.add_argument("--sparsity", type=float, default=0.9, help="fraction pruned per layer")
    p.add_argument("--bits", type=int, default=5, help="cluster-index bits (2^bits centroids)")
    p.add_argument(
        "--index-bits", type=int, default=None, help="relative-index bits (default: smallest)"
    )
    p.add_argument("--epochs", type=int, default=1, help="retraining epochs after each stage")
    p.add_argument("--lr", type=float, default=1e-3, help="retraining learning rate")
    p.add_argument("--float16", action="store_true", help="store codebooks and biases as fp16")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_deep)


def _cmd_deep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from modelzip.command_output import print_json
    from modelzip.core.atomic import write_json
    from modelzip.joint.deep_compression import DeepCompressionConfig, deep_compression
    from modelzip.model_source import dataset_for, load_model
    from modelzip.train import TrainConfig

    # The method config checks the numbers (field, value and range in the message).
    DeepCompressionConfig(sparsity=args.sparsity, bits=args.bits, index_bits=args.index_bits)
    data = dataset_for(args.dataset, args.model)
    quiet = args.json or args.quiet
    model = load_model(args.model, args.weights, args.dataset, progress=not quiet, data=data)
    finetune = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=0.0)
    out = Path(args.out)
    _, result = deep_compression(
        model.eval(), data, sparsity=args.sparsity, bits=args.bits, index_bits=args.index_bits,
        value_dtype="float16" if args.float16 else "float32", finetune=finetune,
        path=out / "model.mzip",
    )  # fmt: skip
    summary = result.to_dict()
    write_json(out / "deep_compression.json", summary)
    if args.json:
        print_json(summary)
        return 0
    s, acc = result.stages, result.accuracy
    for stage, key in (("original", "original"), ("pruned", "pruned"),
                       ("quantized", "quantized"), ("huffman", "huffman")):  # fmt: skip
        print(f"{stage:>10}: {s[stage]:>10,} bytes  accuracy {acc[key]:.4f}")
    print(f"file {out / 'model.mzip'}: {result.file_bytes:,} bytes, {result.ratio:.1f}x smaller")
    return 0
