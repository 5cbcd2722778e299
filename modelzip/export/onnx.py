"""Write a (compressed) model as an ONNX file and check it in onnxruntime.

Uses PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): it honours the
``symbolic`` hooks that emit the int8 ops, and its traced graphs of our layers are plain
``Conv``/``Gemm``/``MatMul`` chains. The batch dimension is symbolic, so the file runs any batch.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.core.atomic import write_bytes
from modelzip.core.errors import ModelError, ModelzipError
from modelzip.core.running import eval_inference
from modelzip.export.convert import exportable
from modelzip.export.subbyte import marked_bits, opset_for, store_narrow_codes

#: The opset of a file without narrow codes; with them, the lowest opset that stores them.
DEFAULT_OPSET = 17
#: The newest opset torch's TorchScript exporter writes; higher ones are converted by onnx.
_TRACE_MAX_OPSET = 20


@dataclasses.dataclass
class ExportResult:
    """What was written, and how closely onnxruntime reproduces the PyTorch model."""

    path: str
    file_bytes: int
    opset: int
    op_types: list[str]
    max_abs_error: float | None  # onnxruntime against PyTorch on the sample; None: not checked
    # How each compressed layer is written ("4-bit codes → DequantizeLinear", "dense float: why").
    layers: dict[str, str] = dataclasses.field(default_factory=dict)

    def dense_layers(self) -> dict[str, str]:
        """The compressed layers written as float weights, with the reason."""
        return {k: v for k, v in self.layers.items() if v.startswith("dense float")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelzipError(
            f"ONNX export needs the {module!r} package: pip install 'modelzip[export]'"
        ) from None


def to_onnx_bytes(
    model: nn.Module,
    sample: torch.Tensor,
    opset: int | None = None,
    dynamic_batch: bool = True,
    forms: dict[str, str] | None = None,
) -> bytes:
    """The serialized ONNX model of ``model`` traced on ``sample`` (compressed layers converted).

    ``opset`` None: :data:`DEFAULT_OPSET`, or 21 (25) when the model holds 4-bit (2-bit) codes,
    the first opsets that store them in their own width. ``forms`` receives how each compressed
    layer is written.
    """
    onnx = _require("onnx")
    work = exportable(model, forms)
    trace_opset = min(opset or DEFAULT_OPSET, _TRACE_MAX_OPSET)
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values in shapes
            torch.onnx.export(
                work,
                (sample,),
                buffer,
                dynamo=False,
                opset_version=trace_opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes=axes,
            )
    except ModelzipError:
        raise
    except Exception as e:  # the exporter raises many types; all mean "this graph won't export"
        # The exporter appends the whole TorchScript graph to its messages; keep the first line.
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(f"torch.onnx.export failed: {type(e).__name__}: {first}") from None
    data = buffer.getvalue()
    proto = onnx.load_from_string(data)
    bits = marked_bits(proto)
    target = opset_for(bits, opset, DEFAULT_OPSET)
    if bits or target != trace_opset:
        try:
            data = store_narrow_codes(proto, target).SerializeToString()
        except Exception as e:  # the version converter's errors name no layer; say what failed
            raise ModelError(f"raising the ONNX graph to opset {target} failed: {e}") from None
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as e:
        raise ModelError(f"the exported ONNX graph is invalid: {e}") from None
    return data


def run_onnx(data: bytes | str | Path, x: torch.Tensor) -> torch.Tensor:
    """Run an ONNX model (bytes or file) on ``x`` in onnxruntime's CPU provider."""
    ort = _require("onnxruntime")
    source = data if isinstance(data, bytes) else str(data)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (out, *_) = session.run(None, {name: x.detach().cpu().numpy()})
    return torch.from_numpy(out)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    sample: torch.Tensor,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    check: bool = True,
) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` (written atomically).

    Parameters
    ----------
    sample:
        An input batch to trace with; with ``check`` the file is run on it in onnxruntime and the
        largest absolute difference from PyTorch's output is returned.

    Raises
    ------
    ModelError
        A layer without an export path (named, with the reason), or a failed trace.
    """
    onnx = _require("onnx")
    forms: dict[str, str] = {}
    data = to_onnx_bytes(model, sample, opset, dynamic_batch, forms)
    error = None
    if check:
        with eval_inference(model):
            ref = model(sample).float().cpu()
        error = float((run_onnx(data, sample) - ref).abs().max())
    write_bytes(path, data)
    proto = onnx.load_from_string(data)
    ops = sorted({n.op_type for n in proto.graph.node})
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return ExportResult(str(path), len(data), written, ops, error, forms)
