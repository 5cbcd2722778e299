"""Data quantization: fewer bits for weights, activations and training signals (Section IV)."""

from modelzip.quantize.int8 import Int8Config, Int8Conv2d, Int8Linear, quantize_symmetric_int8

__all__ = ["Int8Config", "Int8Conv2d", "Int8Linear", "quantize_symmetric_int8"]
