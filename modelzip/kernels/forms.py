"""The executable forms this package's kernels give compressed layers, registered by name in
:mod:`modelzip.core.forms` (which layer classes offer which: their ``executable_forms``).
"""

from __future__ import annotations

import torch
from torch import nn

from modelzip.core.forms import Candidate, register_form


@register_form("dense")
def dense_form(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """The plain torch layer ``to_dense()`` gives (often fastest for small or dense layers)."""
    return [("dense", module.to_dense)]  # type: ignore[list-item]


@register_form("dequantized")
def dequantized_form(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """An int8 layer's weight dequantized once into the plain torch layer, run in float on
    unquantized activations: the same weights, without the activation rounding (so checked with
    the int8 tolerance), often faster than the int8 engine at small channel counts or without
    VNNI, where quantizing and dequantizing the activations costs more than the product saves."""
    return [("int8:dense", module.to_dense)]  # type: ignore[list-item]


@register_form("sparse")
def sparse_form(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A masked layer as CSR, or BSR when its zeros form blocks (:mod:`.sparse_layers`)."""
    from modelzip.kernels.sparse import detect_block
    from modelzip.prune.sparse_exec import SparseConv2d, SparseLinear

    dense = module.to_dense()  # type: ignore[operator]
    if isinstance(dense, nn.Conv2d) and (dense.groups != 1 or isinstance(dense.padding, str)):
        return []
    cls = SparseLinear if isinstance(dense, nn.Linear) else SparseConv2d
    block = detect_block(module.masked_weight())  # type: ignore[operator]
    fmt = f"BSR {block}×{block}" if block > 1 else "CSR"
    return [(f"float:{fmt}", lambda: cls.from_dense(module, block))]


@register_form("int8_dynamic_linear")
def int8_dynamic_linear(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """An int8 linear on PyTorch's x86 dynamic kernel (activations quantized per batch), and the
    same codes and input grid on the native kernel (:mod:`modelzip.kernels.int8_gemv`; faster at
    every batch with VNNI, at 1-4 rows without) and, where onnxruntime is installed, on its int8
    GEMM (:mod:`modelzip.kernels.int8_ort`)."""
    from modelzip.kernels.int8_gemv import gemv_candidates
    from modelzip.kernels.int8_ort import ort_candidates

    def build() -> nn.Module:
        return module.with_activations("dynamic")  # type: ignore[operator]

    return [
        ("int8:x86 linear_dynamic", build),
        *gemv_candidates("int8:native linear_dynamic", build, measuring=x is not None),
        *ort_candidates("int8:onnxruntime linear_dynamic", build),
    ]


@register_form("int8_onednn_conv")
def int8_onednn_conv(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A static int8 conv with its weight prepacked for PyTorch's oneDNN quantized engine instead
    of the default x86 one (fbgemm's direct convolution): the same integer arithmetic (same
    7-bit inputs without VNNI), often faster at small channel counts."""
    from modelzip.kernels.int8 import ENGINE_ATTR, onednn_available

    if not onednn_available() or isinstance(module.geometry.padding, str):  # type: ignore[union-attr]
        return []

    def build() -> nn.Module:
        new = module.with_activations("static")  # type: ignore[operator]
        new.__dict__[ENGINE_ATTR] = "onednn"
        return new

    return [("int8:static onednn", build)]


@register_form("int8_native_conv")
def int8_native_conv(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A static int8 conv with few inputs per output (a first layer) on the native kernel of
    :mod:`modelzip.kernels.int8_small_conv`: the same codes and grids. Offered for measuring
    where the native kernels run; always rebuilt for a file that chose it (without them it
    runs on PyTorch's default engine)."""
    from modelzip.kernels import int8_small_conv as small
    from modelzip.kernels._native import native
    from modelzip.kernels.int8 import ENGINE_ATTR

    g = module.geometry  # type: ignore[union-attr]
    if not small.qualifies(module.codes.shape, g):  # type: ignore[union-attr]
        return []
    if x is not None and native() is None:
        return []

    def build() -> nn.Module:
        new = module.with_activations("static")  # type: ignore[operator]
        new.__dict__[ENGINE_ATTR] = small.ENGINE
        return new

    return [("int8:static native", build)]


@register_form("int8_native_linear")
def int8_native_linear(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A static int8 linear on the native kernel of :mod:`modelzip.kernels.int8_static_gemm`:
    the same codes and grids. Offered for measuring where that kernel runs (the AVX-512 build
    with VNNI); always rebuilt for a file that chose it (elsewhere it runs on PyTorch's default
    engine)."""
    from modelzip.kernels import int8_static_gemm as gemm
    from modelzip.kernels.int8 import ENGINE_ATTR

    if x is not None and not gemm.available():
        return []

    def build() -> nn.Module:
        new = module.with_activations("static")  # type: ignore[operator]
        new.__dict__[ENGINE_ATTR] = gemm.ENGINE
        return new

    return [("int8:static native", build)]


@register_form("int8_dynamic_conv2d")
def int8_dynamic_conv2d(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """An int8 conv on PyTorch's x86 dynamic conv kernel (:class:`.int8.Int8DynamicConv2d`)."""
    if isinstance(module.geometry.padding, str):  # type: ignore[union-attr]
        return []
    from modelzip.kernels.int8 import Int8DynamicConv2d

    return [("int8:x86 conv2d_dynamic", lambda: Int8DynamicConv2d.from_dense(module))]


@register_form("frozen_fake_quant")
def frozen_fake_quant(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """The fake-quantized layer with its quantized weight computed once (scheme ``none``): the
    same outputs without re-quantizing the weights on every call."""

    def build() -> nn.Module:
        frozen = type(module).from_spec({**module.spec(), "scheme": "none"})  # type: ignore[attr-defined,operator]
        with torch.no_grad():
            frozen.weight.copy_(module.quantized_weight())  # type: ignore[operator]
            if module.bias is not None:
                frozen.bias.copy_(module.bias)
            if module.act is not None:
                frozen.act.alpha.copy_(module.act.alpha)  # type: ignore[union-attr]
        return frozen.to(module.weight.device).eval()  # type: ignore[union-attr]

    return [("dense", build)]


@register_form("bit_serial")
def bit_serial(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A fake-quantized linear with k-bit inputs as AND-popcount over bit planes."""
    from modelzip.kernels.bitserial_layers import BitSerialLinear, grid_codes

    act = getattr(module, "act", None)
    if act is None or int(act.bits) > 8 or grid_codes(module.quantized_weight()) is None:  # type: ignore[operator]
        return []
    return [("float:bit-serial AND-popcount", lambda: BitSerialLinear.from_fake_quant(module))]


def _is_pm1(x: torch.Tensor | None) -> bool:
    return x is not None and bool(((x == 1) | (x == -1)).all())


@register_form("binary")
def binary(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A layer whose rows are ``±α`` (a torch layer, or a compressed one that decodes to such
    rows, as 1-bit codes do): XNOR-popcount when its inputs are ±1, else BWN (adds and
    subtracts)."""
    from modelzip.kernels.layers import BinaryConv2d, BinaryLinear, binary_scales

    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        if getattr(module, "weight_bits", None) != 1:
            return []
        module = module.to_dense()  # type: ignore[operator]
    weight = module.weight
    # Rows of one weight are ±α trivially: such a layer is not taken for a binarized one.
    if weight[0].numel() < 2 or binary_scales(weight) is None:  # type: ignore[arg-type,index]
        return []
    if isinstance(module, nn.Conv2d) and (
        module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros"
    ):
        return []
    cls = BinaryLinear if isinstance(module, nn.Linear) else BinaryConv2d
    mode = "xnor" if _is_pm1(x) else "bwn"
    kind = "exact:XNOR-popcount" if mode == "xnor" else "float:BWN add/sub"
    return [(kind, lambda: cls.from_dense(module, mode))]


@register_form("xnor_net")
def xnor_net(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A trained XNOR-Net layer (``XNORLinear``/``XNORConv2d``: binary weights and inputs) as
    :class:`.layers.BinaryLinear`/``BinaryConv2d`` in XNOR mode: packed sign bits, XNOR-popcount,
    then ``α`` and, when the layer scales its activations, ``β``/``K`` from the real input."""
    from modelzip.kernels.layers import BinaryConv2d, BinaryLinear

    dense = module.binary_dense()  # type: ignore[operator]
    if isinstance(dense, nn.Conv2d) and (dense.groups != 1 or isinstance(dense.padding, str)):
        return []
    cls = BinaryLinear if isinstance(dense, nn.Linear) else BinaryConv2d
    scale = bool(getattr(module, "scale_activations", False))
    return [("exact:XNOR-popcount", lambda: cls.from_dense(dense, "xnor", act_scale=scale))]


@register_form("two_gemm_cut")
def two_gemm_cut(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A tensorized linear cut into two GEMMs (:class:`.split_linear.SplitLinear`)."""
    from modelzip.kernels.split_linear import SplitLinear, plan_cut

    cut = plan_cut(module)
    if cut is None:
        return []
    return [("float:two-GEMM cut", lambda: SplitLinear.from_factorized(module, cut))]


@register_form("fused_tt_conv")
def fused_tt_conv(module: nn.Module, x: torch.Tensor | None) -> list[Candidate]:
    """A TT-conv fused per 16-pixel tile (:class:`.tt_conv.FusedTTConv2d`, AVX-512)."""
    from modelzip.kernels.tt_conv import FusedTTConv2d

    fused = FusedTTConv2d.from_tt(module)
    if x is None:  # built again on load: where the kernel cannot run it runs the plain chain
        return [("float:fused TT-conv (AVX-512)", lambda: fused)]
    with torch.no_grad():
        usable = fused.fused_unavailable(x) is None
    return [("float:fused TT-conv (AVX-512)", lambda: fused)] if usable else []
