"""modelzip's int8 against PyTorch's and onnxruntime's, on the same network, side by side.

    python benchmarks/_int8_engines.py [--quick] [--threads N]    # prints one JSON object

Run by the ``engines`` part of ``benchmarks/deploy.py`` in a subprocess (with its thread and OpenMP
settings). Not through the CLI: ``torch.ao`` and onnxruntime are not modelzip commands, so every
model here is built in one process and timed interleaved (median of warm rounds, the first calls
left out; each round calls the models in a new order, and each sample follows one untimed call of
the same model, so that its weights are back in the caches as when it runs alone: the int8 MLP's 25
MB nearly fill a 32 MB L3, and timed right after another model's calls it ran cold, 1.6 ms instead
of 0.97 at batch 1), each against the same fp32 model:

* the MLP 1024-4096-4096-1024 of issue #20, batch 1 and 64: modelzip dynamic and static int8
  (``modelzip.compress``, deployed), ``torch.ao`` ``quantize_dynamic`` and FX static
  (``prepare_fx``/``convert_fx``, x86 qconfig), onnxruntime ``quantize_dynamic`` of the fp32 ONNX
  file, as it is and with ``reduce_range`` (7-bit weights, onnxruntime's advice where uint8 × int8
  products saturate, i.e. without VNNI), and the fp32 file in onnxruntime, for reference; each
  engine's output error against the fp32 model's (RMS, relative) beside its time;
* LeNet-300-100, LeNet-5, the small VGG and ResNet (random weights), batch 64: modelzip static
  int8 against FX static, each against the fp32 model in its fastest memory layout (what the
  CLI's rows are timed against): how far PyTorch's int8 engine itself goes on each network; and
  the fp32 network in onnxruntime, the share of the runtime in a modelzip model that deploy
  chose to run whole on onnxruntime.

Static int8 calibrates on 256 random inputs of the same distribution as the timed ones.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import warnings
from typing import Any

import torch
from torch import nn

warnings.filterwarnings("ignore")


class OrtModule(nn.Module):
    """An onnxruntime session behind ``nn.Module.__call__`` (for the interleaved timer)."""

    def __init__(self, data: bytes, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning pool threads would steal the core from the PyTorch models timed after it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.numpy()})[0])


def _onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)  # fmt: skip
    return buf.getvalue()


def _ort_dynamic(data: bytes, reduce_range: bool = False) -> bytes:
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        src.write_bytes(data)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, reduce_range=reduce_range)
        return dst.read_bytes()


def _fx_static(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (calib[:1],))
    with torch.no_grad():
        for xb in calib.split(64):
            prepared(xb)
    return convert_fx(prepared)


def _modelzip(model: nn.Module, activations: str, sample: torch.Tensor) -> nn.Module:
    import modelzip
    from modelzip.quantize.int8_method import Int8Config

    out, _ = modelzip.compress(
        model, Int8Config(activations=activations), sample=sample, measure=False, evaluate=False
    )
    return out


def _time(named: dict[str, nn.Module], x: torch.Tensor, reps: int) -> dict[str, float]:
    from modelzip.core.timing import time_interleaved

    with torch.inference_mode():
        timings = time_interleaved(
            list(named.values()), x, reps=reps, warmup=3, min_seconds=0.3, shuffle=True, settle=1
        )
    return {k: t.median * 1e3 for k, t in zip(named, timings, strict=True)}


def mlp_rows(threads: int, reps: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1024)
    ).eval()
    calib = torch.randn(256, 1024)
    fp32_onnx = _onnx(mlp, calib[:1])
    engines = {
        "torch.ao dynamic": torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(mlp), {nn.Linear}, dtype=torch.qint8
        ),
        "torch.ao FX static": _fx_static(mlp, calib),
        "onnxruntime dynamic": OrtModule(_ort_dynamic(fp32_onnx), threads),
        # 7-bit weights: onnxruntime's advice where uint8 × int8 products saturate (no VNNI)
        "onnxruntime dynamic, reduce_range": OrtModule(_ort_dynamic(fp32_onnx, True), threads),
        "onnxruntime fp32": OrtModule(fp32_onnx, threads),
    }
    rows = []
    for batch in (1, 64):
        x = torch.randn(batch, 1024)
        named = {
            "fp32": mlp,
            "modelzip dynamic": _modelzip(mlp, "dynamic", x),
            "modelzip static": _modelzip(mlp, "static", calib),
            **engines,
        }
        ms = _time(named, x, reps)
        errors = _errors(named, x)
        for name, t in ms.items():
            rows.append({"model": "mlp 1024-4096-4096-1024", "batch": batch, "engine": name,
                         "ms": round(t, 4), "vs_fp32": round(ms["fp32"] / t, 3),
                         "rms_error": errors[name]})  # fmt: skip
    return rows


def _errors(named: dict[str, nn.Module], x: torch.Tensor) -> dict[str, float]:
    """Each engine's output error against the fp32 model's (RMS, relative to the output's)."""
    with torch.inference_mode():
        ref = named["fp32"](x)
        scale = float(ref.pow(2).mean().sqrt())
        return {k: round(float((m(x) - ref).pow(2).mean().sqrt()) / scale, 4)
                for k, m in named.items()}  # fmt: skip


#: The zoo models of the static int8 rows (28×28 MNIST-shaped input, random weights).
CNN_MODELS = ("lenet300", "lenet5", "vgg_small", "resnet_small")


def cnn_rows(threads: int, reps: int) -> list[dict[str, Any]]:
    from modelzip.deploy import dense_anchor
    from modelzip.models.registry import create

    rows = []
    for name in CNN_MODELS:
        torch.manual_seed(0)
        model = create(name).eval()
        calib, x = torch.randn(256, 1, 28, 28), torch.randn(64, 1, 28, 28)
        named = {
            "fp32": dense_anchor(model, x),
            "modelzip static": _modelzip(model, "static", calib),
            "torch.ao FX static": _fx_static(model, calib),
            # The runtime alone: how much of a modelzip row that onnxruntime runs is not int8.
            "onnxruntime fp32": OrtModule(_onnx(model, x[:1]), threads),
        }
        ms = _time(named, x, reps)
        errors = _errors(named, x)
        for engine, t in ms.items():
            rows.append({"model": name, "batch": 64, "engine": engine, "ms": round(t, 4),
                         "vs_fp32": round(ms["fp32"] / t, 3),
                         "rms_error": errors[engine]})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = 10 if args.quick else 30
    rows = mlp_rows(args.threads, reps) + cnn_rows(args.threads, reps)
    print(json.dumps({"rows": rows, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
