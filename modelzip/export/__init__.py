"""Export of compressed models to ONNX: plain small ops for decomposed layers, the smaller dense
model for pruned ones, QDQ and integer ops for int8 (see :mod:`modelzip.export.convert`)."""

from modelzip.export.convert import export_path, exportable
from modelzip.export.onnx import ExportResult, export_onnx, run_onnx, to_onnx_bytes

__all__ = ["ExportResult", "export_onnx", "export_path", "exportable", "run_onnx", "to_onnx_bytes"]
