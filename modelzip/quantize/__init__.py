"""Data quantization: fewer bits for weights, activations and training signals (Section IV)."""

from modelzip.quantize import fake as _fake
from modelzip.quantize import fold as _fold
from modelzip.quantize import inq as _inq
from modelzip.quantize import int8_chain as _int8_chain
from modelzip.quantize import static_codes as _static_codes
from modelzip.quantize import weights as _weights
from modelzip.quantize import xnor as _xnor
from modelzip.quantize.bn import fold_bn, quantize_bn
from modelzip.quantize.fake import FakeQuantConv2d, FakeQuantLinear, QATConfig
from modelzip.quantize.inq import INQConfig
from modelzip.quantize.int8 import Int8Conv2d, Int8Linear, quantize_symmetric_int8
from modelzip.quantize.int8_method import Int8Config
from modelzip.quantize.layers import QuantConv2d, QuantLinear
from modelzip.quantize.packing import pack_bits, packed_bytes, unpack_bits
from modelzip.quantize.quantizer import Quantized, Quantizer, QuantizerConfig, quantize
from modelzip.quantize.static_int8 import StaticInt8Conv2d, StaticInt8Linear
from modelzip.quantize.weights import (
    BinaryConfig,
    MultibitConfig,
    QuantizeWeightsConfig,
    TernaryConfig,
)
from modelzip.quantize.xnor import XNORConv2d, XNORLinear, XNORNetConfig

# Imported for their registrations.
del _fake, _fold, _inq, _int8_chain, _static_codes, _weights, _xnor

__all__ = [
    "BinaryConfig",
    "FakeQuantConv2d",
    "FakeQuantLinear",
    "INQConfig",
    "Int8Config",
    "Int8Conv2d",
    "Int8Linear",
    "MultibitConfig",
    "QATConfig",
    "QuantConv2d",
    "QuantLinear",
    "QuantizeWeightsConfig",
    "Quantized",
    "Quantizer",
    "QuantizerConfig",
    "StaticInt8Conv2d",
    "StaticInt8Linear",
    "TernaryConfig",
    "XNORConv2d",
    "XNORLinear",
    "XNORNetConfig",
    "fold_bn",
    "pack_bits",
    "packed_bytes",
    "quantize",
    "quantize_bn",
    "quantize_symmetric_int8",
    "unpack_bits",
]
