"""XNOR-Net: binary weights *and* binary inputs, trained through straight-through estimators.

Rastegari, Ordonez, Redmon and Farhadi, "XNOR-Net: ImageNet Classification Using Binary
Convolutional Neural Networks", ECCV 2016. A layer computes

    I ⊛ W ≈ (sign(I) ⊛ sign(W)) ⊙ K α + b

with ``α = mean|W|`` per output row (filter), and ``K`` the activation scale: for a convolution
the map ``A ⊛ k`` (``A`` the mean ``|I|`` over the input channels, ``k`` the ``kh × kw`` box
filter), for a linear layer ``β``, the mean ``|x|`` of each input row. The product of two ±1
operands is ``K − 2·popcount(a ⊕ b)`` on bit-packed words, which is what the executable form runs
(:class:`~modelzip.kernels.layers.BinaryLinear` / ``BinaryConv2d`` in ``mode="xnor"``).

Training keeps a latent float weight; the forward pass uses ``α·sign(W)`` and ``sign(x)``, the
backward pass the straight-through estimator of Courbariaux, Hubara et al. ("Binarized Neural
Networks", NeurIPS 2016): ``∂sign(r)/∂r = 1_{|r| ≤ 1}``, the gradient cancelled where the input
(or latent weight) is beyond ±1. ``α`` (and ``β``/``K``) are differentiable functions of the
latent weight (and input), so autograd adds their terms (the paper's ``1/n`` term of ``∂α/∂W``).

As in the paper the first and last layers stay real-valued (``keep_first_last``): the method
sees the whole model, so it knows which layers those are.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.core.compressed import CompressedConv2d, CompressedLinear, WeightFormat
from modelzip.core.config import MethodConfig
from modelzip.core.context import Context
from modelzip.core.geometry import ConvGeometry
from modelzip.core.layer_workload import plain_workload
from modelzip.core.module import register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.core.running import run_hooked
from modelzip.core.selection import Select
from modelzip.core.workload import Workload
from modelzip.kernels.bitpack import pack_signs, unpack_signs, words_for, words_tensor
from modelzip.kernels.layers import SignThen, sign_pm1, xnor_input_scale
from modelzip.quantize.layers import plain_like, require_float32

__all__ = ["XNORConv2d", "XNORFormat", "XNORLinear", "XNORNetConfig", "binary_weight", "sign_ste"]


class _SignSTE(torch.autograd.Function):
    """``sign`` (``sign(0) = +1``) forward; BNN's straight-through gradient ``g·1_{|r| ≤ 1}``."""

    @staticmethod
    def forward(ctx: Any, r: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(r)
        return sign_pm1(r)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (r,) = ctx.saved_tensors
        return g * (r.abs() <= 1).to(g.dtype)


def sign_ste(r: torch.Tensor) -> torch.Tensor:
    """``sign(r)`` in ±1 with the straight-through gradient, zero where ``|r| > 1``."""
    return _SignSTE.apply(r)  # type: ignore[no-any-return]


def row_scales(w: torch.Tensor) -> torch.Tensor:
    """``α = mean|W|`` per output row (filter), differentiable.

    Summed in float64, then rounded once to the weight's dtype: for a row of ``±α`` (a layer
    loaded from its file) the mean is then exactly ``α`` again, so saving and loading is
    bit-exact (a float32 mean of ``n`` copies of ``α`` can be off by one unit in the last place).
    """
    return w.reshape(w.shape[0], -1).double().abs().mean(dim=1).to(w.dtype)


def binary_weight(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's ``W_b = α·sign(W)`` (``α`` per output row), with straight-through gradients."""
    rows = w.reshape(w.shape[0], -1)
    return (row_scales(w)[:, None] * sign_ste(rows)).reshape(w.shape)


class XNORFormat(WeightFormat):
    """Storage: a latent float ``weight`` trained through ``α·sign``; the file holds only
    ``sign(W)`` packed 64 per ``int64`` word (``words``, one bit per weight, rows in unfold order)
    and ``α`` per row, and loading sets the latent weight to ``α·sign(W)``.

    The forward binarizes the input too, ``sign(x)`` with a straight-through gradient, and scales
    the product by ``β``/``K`` when ``scale_activations``.
    """

    # to_dense() computes the same with plain ops (sign, Conv/Gemm, the scale): ONNX has them.
    onnx_export = (
        "dense: the weight α·sign(W) is written as float (1-bit codes for XNOR layers, whose "
        "latent weight is the state, are not exported yet)"
    )
    # The dense product of ±1 inputs, or the bit-packed XNOR-popcount kernel (last, so
    # ``materialize(choose="compressed")`` takes it).
    executable_forms = ("dense", "xnor_net")
    weight_bits = 1
    weight: nn.Parameter

    def _init_format(self, weight_shape: tuple[int, ...], scale_activations: bool = True) -> None:
        self.weight_shape = tuple(weight_shape)
        self.scale_activations = bool(scale_activations)
        self.weight = nn.Parameter(torch.zeros(weight_shape))

    def format_spec(self) -> dict[str, Any]:
        return {"scale_activations": self.scale_activations}

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> Any:
        """The XNOR layer of a plain ``nn.Linear``/``nn.Conv2d``, latent weight = its weight."""
        scale = bool(getattr(config, "scale_activations", True))
        if isinstance(dense, nn.Conv2d) and (dense.groups != 1 or isinstance(dense.padding, str)):
            # The K map and the packed kernels are written for one group and numeric padding.
            raise SkipLayer("XNOR convolutions need groups=1 and numeric zero padding")
        layer = plain_like(dense, XNORLinear, XNORConv2d, "xnor_net", scale_activations=scale)
        with torch.no_grad():
            layer.weight.copy_(dense.weight.float())
        return layer

    # -- what the layer computes -----------------------------------------------------------
    def alpha(self) -> torch.Tensor:
        """``α = mean|W|`` per output row of the latent weight."""
        return row_scales(self.weight)

    def decode_weight(self) -> torch.Tensor:
        return binary_weight(self.weight)

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        """``sign(x)`` in ±1, what the layer multiplies (straight-through gradient)."""
        return sign_ste(x)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xb = self.binary_input(x)
        if not self.scale_activations:
            return super().linear(xb, bias)
        y = super().linear(xb, None) * xnor_input_scale(x, None)
        return y if bias is None else y + bias

    def conv2d(
        self, x: torch.Tensor, geometry: ConvGeometry, bias: torch.Tensor | None
    ) -> torch.Tensor:
        xb = self.binary_input(x)
        if not self.scale_activations:
            return super().conv2d(xb, geometry, bias)
        y = super().conv2d(xb, geometry, None) * xnor_input_scale(x, geometry)
        return y if bias is None else y + bias.reshape(1, -1, 1, 1)

    def to_dense(self) -> nn.Module:
        """``sign(x)`` into the plain layer of weight ``α·sign(W)`` (then ``×β``/``K``, ``+b``)."""
        return SignThen(self.binary_dense(), self.scale_activations)

    def binary_dense(self) -> nn.Module:
        """The plain ``nn.Linear``/``nn.Conv2d`` holding ``α·sign(W)`` and the bias: what the
        XNOR kernel layers are built from."""
        return super().to_dense()  # type: ignore[misc,no-any-return]

    def workloads(self, name: str, inputs: tuple[Any, ...], output: Any) -> list[Workload]:
        """The op with 1-bit weights and 1-bit inputs (the scales are a per-output multiply)."""
        op = plain_workload(name, self.binary_dense(), inputs, output,
                            params=self.param_count(), weight_bits=1,  # type: ignore[attr-defined]
                            weight_bytes=self.storage_bytes())  # type: ignore[attr-defined]  # fmt: skip
        return [dataclasses.replace(op, act_bits=1)]

    # -- what a file holds -----------------------------------------------------------------
    def _k(self) -> int:
        return math.prod(self.weight_shape[1:])

    def packed_state(self) -> dict[str, torch.Tensor]:
        w = self.weight.detach()
        device = w.device
        state = {
            "words": words_tensor(pack_signs(w.reshape(w.shape[0], -1))).to(device),
            "alpha": row_scales(w),
        }
        if self.bias is not None:  # type: ignore[attr-defined]
            state["bias"] = self.bias.detach()  # type: ignore[attr-defined]
        return state

    @torch.no_grad()
    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        rows, k = self.weight_shape[0], self._k()
        words, alpha = state["words"], state["alpha"]
        # Files are untrusted: shapes are checked before anything is unpacked.
        if tuple(words.shape) != (rows, words_for(k)) or words.dtype != torch.int64:
            raise ValueError(f"words {tuple(words.shape)} {words.dtype}: expected "
                             f"({rows}, {words_for(k)}) int64")  # fmt: skip
        if tuple(alpha.shape) != (rows,):
            raise ValueError(f"alpha {tuple(alpha.shape)}: expected ({rows},)")
        signs = unpack_signs(words.cpu().numpy().view(np.uint64), k)
        latent = torch.from_numpy(signs).to(self.weight) * alpha.to(self.weight)[:, None]
        self.weight.copy_(latent.reshape(self.weight_shape))
        if self.bias is not None:  # type: ignore[attr-defined]
            self.bias.copy_(state["bias"])  # type: ignore[attr-defined]


@register_layer
class XNORLinear(XNORFormat, CompressedLinear):
    """``y = β ⊙ (sign(x) · α·sign(W)ᵀ) + b``, trainable (XNOR-Net, latent weight + STE)."""


@register_layer
class XNORConv2d(XNORFormat, CompressedConv2d):
    """``y = (sign(x) ⊛ α·sign(W)) ⊙ K + b``, trainable (XNOR-Net, latent weight + STE)."""


@dataclasses.dataclass(frozen=True)
class XNORNetConfig(MethodConfig):
    """XNOR-Net: binary weights ``α·sign(W)`` and binary inputs ``sign(x)``, so that products are
    XNOR and popcount; trained with straight-through gradients (``finetune=``), deployed on the
    bit-packed XNOR kernels.

    Layers whose inputs are never negative on the sample (after a ReLU, raw pixels) are skipped
    with the reason: their ``sign(x)`` would be +1 everywhere. XNOR-Net binarizes inputs that
    batch normalization has centred (BN, sign, conv, pool).

    Parameters
    ----------
    scale_activations:
        Multiply each output by the paper's activation scale: ``K``, the mean ``|x|`` over the
        input channels averaged over each kernel window (convolutions), or ``β``, the mean
        ``|x|`` of each input row (linear layers). Off: ``sign(x)·α·sign(W) + b`` alone.
    keep_first_last:
        Leave the first and last Linear/Conv2d layers of the model (in the order the sample
        runs them, else in module order) real-valued, as XNOR-Net does; they are reported as
        skipped with the reason.
    """

    method = "xnor_net"
    scale_activations: bool = True
    keep_first_last: bool = True


def _plain_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Linear/Conv2d of ``model`` (compressed ones standing for them too), module order."""
    return list(Select().select(model, ("Linear", "Conv2d")))


def _observe(
    model: nn.Module, sample: Any, layers: list[tuple[str, nn.Module]]
) -> tuple[list[int], dict[int, float]]:
    """Run ``sample`` once: the layers (by id) in the order of their first call, and the least
    input value each saw."""
    order: list[int] = []
    least: dict[int, float] = {}

    def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        key = id(module)
        if key not in least:
            order.append(key)
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor) and x.numel() and x.is_floating_point():
            least[key] = min(least.get(key, math.inf), float(x.detach().min()))
        else:
            least.setdefault(key, -math.inf)  # nothing to judge by: not taken for non-negative

    modules = {id(m): m for _, m in layers}
    run_hooked(model, sample, [(m, hook) for m in modules.values()], pre=True)
    return order, least


def _ends(layers: list[tuple[str, nn.Module]], order: list[int] | None) -> dict[int, str]:
    """The first and last layer (by id), with the word for it."""
    ids = order if order else [id(m) for _, m in layers]
    if not ids:
        return {}
    return {ids[-1]: "last", ids[0]: "first"}  # one layer only: it is the first


@register_method(XNORNetConfig, family="quantize", example=XNORNetConfig(), scope="model")
def xnor_net(model: nn.Module, config: XNORNetConfig, ctx: Context) -> None:
    """Binary weights and inputs on XNOR-popcount (XNOR-Net), first and last layers kept real.

    Each selected plain layer becomes an :class:`XNORLinear`/:class:`XNORConv2d` (train it with
    ``finetune=``); the first and last layers (``keep_first_last``), layers whose sample inputs
    are never negative, and layers the kernels cannot run are skipped with the reason.
    """
    method = config.method
    layers = _plain_layers(model)
    order, least = None, {}
    if ctx.sample is not None and layers:
        order, least = _observe(model, ctx.sample, layers)
    ends = _ends(layers, order) if config.keep_first_last else {}
    seen: set[int] = set()
    for name, module in list(config.select.select(model, config.default_types)):
        if id(module) in seen:  # a shared layer: ctx.replace swaps all its names at once
            continue
        seen.add(id(module))
        # What the layer cannot be (another dtype, a grouped conv, already compressed) is said
        # before what the method chooses to keep (the first and last layers).
        try:
            require_float32(module)
            new = XNORFormat.from_dense(module, config)
        except SkipLayer as e:
            ctx.skip(name, method, str(e))
            continue
        reason = _reason_to_keep(module, ends, least)
        if reason is not None:
            ctx.skip(name, method, reason)
            continue
        scale = "K" if isinstance(new, XNORConv2d) else "β"
        note = "1-bit weights and inputs, α per row"
        note += f", {scale} scale" if config.scale_activations else ""
        ctx.replace(name, new, method=method, note=note)


def _reason_to_keep(module: nn.Module, ends: dict[int, str], least: dict[int, float]) -> str | None:
    """Why ``module`` stays as it is, or None."""
    where = ends.get(id(module))
    if where is not None:
        return (f"the {where} layer: XNOR-Net keeps the first and last layers real-valued "
                "(keep_first_last=true)")  # fmt: skip
    if least.get(id(module), -math.inf) >= 0:
        return ("its inputs on the sample are never negative (after a ReLU, or raw pixels): "
                "sign(x) would be +1 everywhere and the layer a constant; XNOR-Net binarizes "
                "inputs that batch normalization has centred")  # fmt: skip
    return None
