"""``modelzip export FILE --format onnx --out model.onnx`` (registered by :mod:`modelzip.cli`)."""

from __future__ import annotations

import argparse

FORMATS = ("onnx",)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to ``sub``."""
    p = sub.add_parser("export", help="write a (compressed) model as ONNX")
    p.add_argument("model", help="a saved .mzip file, a zoo name or package.module:factory")
    p.add_argument("--weights", help="weights file")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="output format (onnx)")
    p.add_argument("--out", required=True, help="output file (.onnx)")
    p.add_argument(
        "--opset", type=int, default=None,
        help="ONNX opset (default 17; 21 or 25 when 4-bit or 2-bit codes are stored as such)",
    )  # fmt: skip
    p.add_argument("--input-shape", help="one input's shape, e.g. 1,28,28 (zoo models know it)")
    p.add_argument("--batch", type=int, default=1, help="batch to trace and check with")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from modelzip.command_output import print_json
    from modelzip.core.errors import ConfigError
    from modelzip.export.onnx import export_onnx
    from modelzip.model_source import load_model, sample_batch

    for flag, value, low, high in (
        ("--opset", args.opset, 13, 25),
        ("--batch", args.batch, 1, 65536),
    ):
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{flag}={value} is out of range; allowed [{low}, {high}]")
    model = load_model(args.model, args.weights, pretrained=False)
    sample = sample_batch(model, args.input_shape, args.batch)
    result = export_onnx(model, args.out, sample, opset=args.opset, check=not args.no_check)
    if args.json:
        print_json(result.to_dict())
        return 0
    error = (
        ""
        if result.max_abs_error is None
        else (f"; onnxruntime vs PyTorch max |diff| {result.max_abs_error:.3g}")
    )
    print(f"wrote {result.path} ({result.file_bytes:,} bytes, opset {result.opset}{error})")
    print("ops: " + ", ".join(result.op_types))
    for name, form in result.dense_layers().items():  # the file is as large as these layers
        print(f"{name}: {form}")
    return 0
