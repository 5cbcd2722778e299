"""Export of compressed models to ONNX."""
