"""int8 weights and their products on PyTorch's own CPU kernels (no hand-written int8 GEMM:
these win).

* :func:`int8_matmul`: ``torch._int_mm``, int8 × int8 → int32 (oneDNN, AVX-512 VNNI here).
  Without VNNI oneDNN's signed × signed product is not exact (pairs of products are added in a
  saturating int16, see :mod:`modelzip.kernels.isa`); there the product is computed in float,
  which is exact for these integers.
* :func:`prepack_linear` / :func:`linear_dynamic`: the x86/fbgemm dynamic-quantized linear
  (activations quantized per batch to 7 bits, PyTorch's ``reduce_range``, so that the uint8 ×
  int8 products cannot saturate on CPUs without VNNI; per-channel int8 weights prepacked once).
* :func:`prepack_conv2d` / :func:`conv2d_dynamic`: the same for convolutions.
* :class:`Int8Format`: the storage of the int8 layers (symmetric codes ``q`` with per-channel
  scales ``Δ``, ``W ≈ Δ_k·q``) and its activation policy, which picks the product:

  - ``"float"``: the weight is dequantized (and cached) and the product is in float;
  - ``"dynamic"``: the input is quantized per call, by the kernels above;
  - ``"static"``: the input and output are quantized to uint8 with ranges calibrated beforehand
    (:mod:`modelzip.quantize.static_int8`) around ``torch.ops.quantized.linear``/``conv2d``.
    Where int8 products can saturate (x86 without VNNI) the input is quantized on 7 bits: the
    calibrated range split into 128 steps instead of 256 (codes 0..127); the buffers keep the
    8-bit calibration, the grid is chosen by the machine that runs the layer.

  Elsewhere than the CPU, for other dtypes and while autograd records, the same arithmetic runs
  in float (the static policy as fake quantization). The layers are
  :class:`modelzip.quantize.int8.Int8Linear`/``Int8Conv2d``, the static ones of
  :mod:`modelzip.quantize.static_int8`, and :class:`Int8DynamicConv2d` here; see Jacob et al.,
  CVPR 2018 for the integer scheme.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

import modelzip.kernels.isa as isa
from modelzip.core.compressed import CompressedConv2d, CompressedLinear, WeightFormat
from modelzip.core.geometry import ConvGeometry
from modelzip.core.module import register_layer

#: Products of int8 codes are at most 2^14 in magnitude: float32 adds up to 2^10 of them exactly.
_FLOAT32_EXACT_K = 2**24 // 2**14


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``A·B`` (``int32``) of int8 matrices ``A`` (``M × K``) and ``B`` (``K × N``).

    ``torch._int_mm`` where int8 products cannot saturate; elsewhere (x86 without VNNI,
    :func:`modelzip.kernels.isa.int8_saturation`) a float GEMM, exact because every partial sum
    is an integer below 2^24 (float32, ``K ≤ 1024``) or 2^53 (float64). oneDNN's signed × signed
    path there shifts one operand to unsigned and adds pairs of products in a saturating int16;
    which operand it shifts depends on the shape, so no split of the operands is safe for all.
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_matmul takes int8 operands, got {a.dtype} and {b.dtype}")
    if a.device.type == "cpu" and isa.int8_saturation() is not None:
        dtype = torch.float32 if a.shape[1] <= _FLOAT32_EXACT_K else torch.float64
        return (a.to(dtype) @ b.to(dtype)).to(torch.int32)
    return torch._int_mm(a.contiguous(), b.contiguous())


def _quantized_weight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # quantized-tensor constructors warn of deprecation
        warnings.simplefilter("ignore")
        if scale.numel() == 1:
            return torch._make_per_tensor_quantized_tensor(codes.cpu(), float(scale), 0)
        zero = torch.zeros(codes.shape[0], dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(codes.cpu(), scale.double().cpu(), zero, 0)


def prepack_linear(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """fbgemm/x86 prepacked weight of an int8 linear layer (codes ``out × in``)."""
    b = bias.detach().float().cpu() if bias is not None else None
    return torch.ops.quantized.linear_prepack(_quantized_weight(codes, scale), b)


def linear_dynamic(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """``y = x·Wᵀ + b`` with ``x`` quantized per call to 7 bits (float in, float out)."""
    shape = x.shape
    y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).contiguous(), packed, True)
    return y.reshape(*shape[:-1], y.shape[-1])


_ENGINE_SWITCH = threading.Lock()


def prepack_conv2d(
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    engine: str | None = None,
) -> Any:
    """Prepacked weight of an int8 convolution (codes ``out × in/groups × kh × kw``) for the
    quantized engine in use, or for ``engine`` (``"onednn"``, see :data:`ENGINE_ATTR`): the
    packed weight carries its engine, so the op runs that engine's kernel whatever the global
    setting is when it is called."""
    b = bias.detach().float().cpu() if bias is not None else None
    args = (_quantized_weight(codes, scale), b, list(stride), list(padding), list(dilation))
    # The setting is process-wide: under one lock, so that a thread prepacking for the default
    # engine never sees another's switch, and two switches never restore each other's setting.
    with _ENGINE_SWITCH:
        if engine is None or engine == torch.backends.quantized.engine:
            return torch.ops.quantized.conv2d_prepack(*args, groups)
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            return torch.ops.quantized.conv2d_prepack(*args, groups)
        finally:
            torch.backends.quantized.engine = before


def onednn_available() -> bool:
    """Whether this PyTorch build has the oneDNN quantized engine (x86 builds do)."""
    return "onednn" in torch.backends.quantized.supported_engines


def conv2d_dynamic(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """Convolution with ``x`` quantized per call to 7 bits (float in, float out)."""
    return torch.ops.quantized.conv2d_dynamic(x.contiguous(), packed, True)


#: Top int8 weight code (the symmetric range -127..127).
QMAX = 127
#: The activation policies of :class:`Int8Format`.
ACTIVATIONS = ("float", "dynamic", "static")
#: Top uint8 code of a static activation, and the one where int8 products can saturate.
ACT_QMAX, QMAX_REDUCED = 255, 127


def quantize_symmetric_int8(
    weight: torch.Tensor, per_channel: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int8, same shape) and scales (float32, per output channel or one) of ``weight``."""
    w = weight.detach().float()
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1) if per_channel else w.abs().amax().reshape(1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    view = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w / scale.reshape(view)), -QMAX, QMAX).to(torch.int8)
    return codes, scale


def qparams(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of the uint8 affine map covering ``[lo, hi]`` (containing 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / ACT_QMAX if hi > lo else 1.0
    zero = round(-lo / scale)
    return float(scale), max(0, min(ACT_QMAX, zero))


def reduced_qparams(scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 7-bit grid (codes ``0..127``) over the range of the 8-bit grid ``(scale, zero)``:
    ``[-zero·scale, (255 - zero)·scale]`` in 127 steps of ``255/127·scale``."""
    zero7 = torch.round(zero * (QMAX_REDUCED / ACT_QMAX)).clamp(0, QMAX_REDUCED).long()
    return scale * (ACT_QMAX / QMAX_REDUCED), zero7


#: On a static int8 conv whose following BatchNorm the int8 chain folded
#: (:mod:`modelzip.quantize.int8_chain`): ``(mul, add, (out_scale, out_zero))``, the per-channel
#: map ``y·mul + add`` its output then takes and the grid that map's range needs.
FOLD_ATTR = "_modelzip_int8_fold"
#: On a static int8 layer the int8 chain linked: the grid ``(scale, zero, qmax)`` its output is
#: written on (left uint8 for the next layer).
EMIT_ATTR = "_modelzip_int8_emit"
#: On a static int8 conv: the quantized engine its weight is prepacked for (``"onednn"``), set
#: by the deploy step's ``int8:static onednn`` form where that measured faster than the default
#: x86 engine (fbgemm's direct convolution; on an AVX2 EPYC oneDNN ran ResNet-small's 16- and
#: 32-channel 3×3 convs 1.5-3× faster, LeNet-5's 5×5 convs 1.3-3×), or ``"native"``, the
#: first-layer kernel of :mod:`.int8_small_conv` (``int8:static native``). On a static int8
#: linear: ``"native"``, the kernel of :mod:`.int8_static_gemm`. On a dynamic int8 linear:
#: ``"onnxruntime"`` (:mod:`modelzip.kernels.int8_ort`) or ``"native"``, modelzip's kernel
#: of :mod:`.int8_gemv`. Absent: the default engine.
ENGINE_ATTR = "_modelzip_int8_engine"
#: How many input shapes (× thread counts) a static int8 conv keeps a prepacked weight for
#: (see ``Int8Format._packed_for_call``).
PACKED_KEYS = 4
#: The other engines a dynamic int8 linear runs on, by the name its :data:`ENGINE_ATTR` holds:
#: each builds, from the codes, scales and bias, the callable ``x ↦ y`` the layer keeps like a
#: prepacked weight. Registered by the module that implements it (:mod:`.int8_ort`).
DYNAMIC_LINEAR_ENGINES: dict[str, Callable[..., Callable[[torch.Tensor], torch.Tensor]]] = {}


class DynamicLinearEngine:
    """Base of the engines in :data:`DYNAMIC_LINEAR_ENGINES`: ``y = x·Wᵀ + b`` with
    ``W = scale_k · codes``, holding the codes, one scale per output row and the bias on the
    CPU. What an engine builds from them (a session, a packing) is its own and built on first
    use; a copy or a pickle carries the weights only."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        out_f = codes.shape[0]
        self.codes = codes.detach().cpu().contiguous()
        self.scale = scale.detach().float().cpu().reshape(-1).expand(out_f).contiguous()
        self.bias = None if bias is None else bias.detach().float().cpu().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.codes, self.scale, self.bias))

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return type(self)(self.codes.clone(), self.scale.clone(), self.bias)


#: On a static int8 layer whose following ReLU the int8 chain fused: True (the engine's ``_relu``
#: op clamps the output at the zero point in its requantization; the ReLU node is dropped).
RELU_ATTR = "_modelzip_int8_relu"


#: On a static int8 conv on the native first-layer kernel that the int8 chain linked to the
#: normalization before it (``(x - mean) / std`` with constant numbers): ``(a, b)``, its input
#: is ``x·a + b`` of what it is given; the kernel does that in its input quantization (one
#: multiply-add per value it reads anyway) and the normalization's nodes are dropped.
INPUT_AFFINE_ATTR = "_modelzip_int8_input_affine"


def _direct(op: Any) -> Any:
    """The C++ callable behind a resolved op overload: calling the overload itself first checks
    in Python whether an argument is a tracing placeholder of a packed weight (about 3 µs a
    call, half of what set these layers' per-call time apart from ``torch.ao``'s on small
    layers); the arguments here are the real packed weights."""
    return getattr(op, "_op", op)


_q = torch.ops.quantized
#: The engine's ops of a policy: dynamic, static, static with a fused ReLU. Resolved overloads
#: (``conv2d.new`` takes the prepacked weight): a call skips the packet's overload lookup.
_LINEAR_OPS = tuple(
    _direct(op) for op in (_q.linear_dynamic.default, _q.linear.default, _q.linear_relu.default)
)
_CONV_OPS = tuple(
    _direct(op) for op in (_q.conv2d_dynamic.default, _q.conv2d.new, _q.conv2d_relu.new)
)
#: Whether ``torch.quantize_per_tensor`` has run: it warns of its deprecation once per process
#: (TORCH_WARN_ONCE), so only the first call needs the warning silenced.
_quantized_once = False


def quantize_per_tensor(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """``x`` as a quint8 tensor on ``(scale, zero)``, its deprecation warning kept quiet."""
    global _quantized_once
    if _quantized_once:
        return torch.quantize_per_tensor(x, scale, zero, torch.quint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(x, scale, zero, torch.quint8)
    _quantized_once = True
    return q


def _fake(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int = ACT_QMAX) -> Any:
    q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    return (q - zero) * scale


class Int8Format(WeightFormat):
    """Storage: int8 ``codes`` shaped like the weight and float ``scale`` per output channel (or
    one), with the activation policy (:data:`ACTIVATIONS`) deciding the product; the static
    policy adds the calibrated ``in_scale``/``in_zero``/``out_scale``/``out_zero``."""

    weight_bits = 8
    #: The policy of a class that has only that one (its spec then leaves ``activations`` out).
    policy: ClassVar[str | None] = None

    codes: torch.Tensor
    scale: torch.Tensor
    in_scale: torch.Tensor
    in_zero: torch.Tensor
    out_scale: torch.Tensor
    out_zero: torch.Tensor

    def _init_format(
        self, weight_shape: tuple[int, ...], per_channel: bool = True, activations: str = ""
    ) -> None:
        activations = activations or self.policy or "float"
        if activations not in ACTIVATIONS or self.policy not in (None, activations):
            allowed = self.policy or ", ".join(ACTIVATIONS)
            raise ValueError(f"{type(self).__name__} takes activations {allowed}: {activations!r}")
        self.weight_shape = tuple(weight_shape)
        self.per_channel, self.activations = per_channel, activations
        self.register_buffer("codes", torch.zeros(weight_shape, dtype=torch.int8))  # type: ignore[attr-defined]
        self.register_buffer("scale", torch.ones(weight_shape[0] if per_channel else 1))  # type: ignore[attr-defined]
        if activations == "static":
            for name in ("in_scale", "out_scale"):
                self.register_buffer(name, torch.ones(()))  # type: ignore[attr-defined]
            for name in ("in_zero", "out_zero"):
                self.register_buffer(name, torch.zeros((), dtype=torch.long))  # type: ignore[attr-defined]

    def format_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"per_channel": self.per_channel}
        return spec if self.policy else {**spec, "activations": self.activations}

    def decode_weight(self) -> torch.Tensor:
        view = (-1,) + (1,) * (self.codes.dim() - 1)
        return self.codes.to(self.scale.dtype) * self.scale.reshape(view)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.decoded_weight(dtype)

    @classmethod
    def quantized(cls, dense: Any, per_channel: bool = True, activations: str = "") -> Any:
        """An empty layer of ``dense``'s shape holding its weight quantized, and its bias."""
        layer = cls.like(dense, per_channel=per_channel, activations=activations)  # type: ignore[attr-defined]
        codes, scale = quantize_symmetric_int8(dense.weight, per_channel)
        with torch.no_grad():
            layer.codes.copy_(codes)
            layer.scale.copy_(scale)
            if layer.bias is not None:
                layer.bias.copy_(dense.bias)
        return layer

    @classmethod
    def from_dense(cls, dense: Any, config: Any) -> Any:
        """``config.activations="dynamic"`` reaches linear layers; a conv computes in float (its
        dynamic kernel is a form :func:`modelzip.deploy.materialize` may choose)."""
        dynamic = config.activations == "dynamic" and issubclass(cls, CompressedLinear)
        return cls.quantized(dense, config.per_channel, "dynamic" if dynamic else "")

    def with_activations(self, activations: str, cls: type[Int8Format] | None = None) -> Any:
        """A new layer (of ``cls``, this class by default; on the CPU, in eval mode) holding this
        weight and bias under another activation policy."""
        new = (cls or type(self)).from_spec({**self.spec(), "activations": activations})  # type: ignore[attr-defined]
        new.load_state_dict(self.state_dict())  # type: ignore[attr-defined]
        return new.eval()

    # The static policy's activation quantization.

    @torch.no_grad()
    def set_ranges(self, rin: tuple[float, float], rout: tuple[float, float]) -> None:
        for (lo, hi), s, z in ((rin, "in_scale", "in_zero"), (rout, "out_scale", "out_zero")):
            scale, zero = qparams(lo, hi)
            getattr(self, s).fill_(scale)
            getattr(self, z).fill_(zero)

    def input_qparams(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Scale, zero point and top code of the input's quantization on this machine: the
        calibrated 8-bit grid, or its 7-bit form (:func:`reduced_qparams`) where int8 products
        can saturate (:func:`modelzip.kernels.isa.reduced_int8_range`)."""
        if isa.reduced_int8_range():
            return (*reduced_qparams(self.in_scale, self.in_zero), QMAX_REDUCED)
        return self.in_scale, self.in_zero, ACT_QMAX

    def _quantize_input(
        self, x: torch.Tensor, grid: tuple[float, int, int] | None = None
    ) -> torch.Tensor:
        """``x`` as uint8 on the input grid ``(scale, zero, qmax)`` (this layer's by default).
        Above a 7-bit ``qmax`` the codes are clipped after quantizing: one pass over bytes
        instead of one over floats."""
        scale, zero, qmax = grid or self._engine_state(None)[1]
        if not x.is_quantized:  # else written on this grid by a chained layer (int8_chain)
            x = quantize_per_tensor(x, scale, zero)
        return x if qmax == ACT_QMAX else torch.clamp(x, max=(qmax - zero) * scale)

    # The products.

    def _on_engine(self, x: torch.Tensor, geometry: ConvGeometry | None = None) -> bool:
        """Whether PyTorch's int8 engine runs this call (else the float simulation)."""
        return (
            self.activations != "float"
            and x.device.type == "cpu"
            and (x.dtype == torch.float32 or x.is_quantized)
            and not torch.is_grad_enabled()
            and not (geometry is not None and isinstance(geometry.padding, str))
        )

    def _simulated(self, x: torch.Tensor, product: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        """``product`` in float, between the static policy's input and output quantization."""
        if self.activations != "static":
            return product(x)
        # A chained layer's output is rounded on the grid it writes (the next layer's input).
        emit = self.__dict__.get(EMIT_ATTR)
        grid = (torch.tensor(emit[0]), torch.tensor(emit[1])) if emit else None
        y = product(_fake(x, *self.input_qparams()))
        fold = self.__dict__.get(FOLD_ATTR)
        if fold is not None:
            view = (1, -1) + (1,) * (y.dim() - 2)
            y = y * fold[0].reshape(view) + fold[1].reshape(view)
            grid = grid or (torch.tensor(fold[2][0]), torch.tensor(fold[2][1]))
        if self.__dict__.get(RELU_ATTR):
            y = torch.relu(y)
        return _fake(y, *(grid or (self.out_scale, self.out_zero)))

    def _weights(self, bias: torch.Tensor | None) -> tuple[Any, Any, Any]:
        """Codes, scales and bias the engine runs: with a folded BatchNorm, ``mul`` goes into
        the scales (its sign into the codes: the engine takes positive scales) and ``add`` into
        the bias."""
        fold = self.__dict__.get(FOLD_ATTR)
        if fold is None:
            return self.codes, self.scale, bias
        mul, add = fold[0], fold[1]
        view = (-1,) + (1,) * (self.codes.dim() - 1)
        sign = torch.where(mul < 0, -1, 1).to(torch.int8).reshape(view)
        b = add if bias is None else bias * mul + add
        return self.codes * sign, self.scale * mul.abs(), b

    def _engine_state(self, build: Callable[[], Any] | None) -> tuple[Any, Any, Any]:
        """The engine's prepacked weight and, for the static policy, the input grid
        ``(scale, zero, qmax)`` and output grid ``(scale, zero)`` as Python numbers: computed
        once and kept while the layer's tensors are unchanged (the key of
        :meth:`WeightFormat.decoded_weight`'s cache), so a call pays no tensor arithmetic for
        them. ``build`` makes the prepacked weight (None: the grids only)."""
        static = self.activations == "static"
        notes = self.__dict__
        reduced = static and isa.reduced_int8_range()
        key = [id(notes.get(FOLD_ATTR)), notes.get(ENGINE_ATTR), reduced]
        key += [
            (t._version, t.data_ptr())
            for t in (*self._parameters.values(), *self._buffers.values())  # type: ignore[attr-defined]
            if t is not None
        ]
        cache: list[Any] | None = notes.get("_engine_cache")
        if cache is None or cache[0] != key:
            grids: tuple[Any, Any] = (None, None)
            if static:
                scale, zero, qmax = self.input_qparams()
                grids = (
                    (float(scale), int(zero), qmax),
                    (float(self.out_scale), int(self.out_zero)),
                )
                fold = self.__dict__.get(FOLD_ATTR)
                if fold is not None:
                    grids = (grids[0], fold[2])
            cache = self.__dict__["_engine_cache"] = [key, None, *grids, {}]
        if build is not None and cache[1] is None:
            cache[1] = build()
        return cache[1], cache[2], cache[3]

    def _packed_for_call(
        self, x: torch.Tensor, out: tuple[float, int, bool], build: Callable[[], Any]
    ) -> Any:
        """The prepacked static conv weight for ``x``'s shape, the output grid and ReLU
        ``out`` and this thread count. PyTorch's oneDNN int8 conv (the x86 engine's where VNNI
        is present, and the ``"onednn"`` engine) keeps the primitive of a weight's *first* call
        only (a ``call_once`` cache keyed by the input shape, the grids and the thread count)
        and builds a new one at every call that differs. A deployed layer is first called on
        the deploy sample, often another batch size, and then ran every later call that way:
        4-8% per conv on the small VGG (AVX-512 VNNI, 2 threads), most of what set it behind
        ``torch.ao`` FX, whose weights are first called at the batch they run. Each of the
        first :data:`PACKED_KEYS` keys gets its own prepacked weight (a conv's is small); later
        keys share the first one (correct, slower)."""
        cache = self.__dict__["_engine_cache"]
        packs: dict[Any, Any] = cache[4]
        key = (*x.shape, *out, torch.get_num_threads())
        packed = packs.get(key)
        if packed is None:
            # the weight _engine_state built serves the first key (and those past the limit)
            packed = build() if 0 < len(packs) < PACKED_KEYS else cache[1]
            packs[key] = packed
        return packed

    def _run(
        self,
        ops: tuple[Any, Any, Any],
        x: torch.Tensor,
        build: Callable[[], Any],
        in_affine: tuple[float, float] | None = None,
    ) -> Any:
        """``x`` through the engine: ``ops`` are the dynamic op, the static one and the static
        one with the ReLU in its requantization (a chained layer whose ReLU was fused,
        :data:`RELU_ATTR`). A chained layer writes its output on the next layer's input grid and
        leaves it uint8 (:mod:`modelzip.quantize.int8_chain`)."""
        packed, in_grid, out_grid = self._engine_state(build)
        if in_grid is None:
            return _as_input(ops[0](x.contiguous(), packed, True), x, self.codes)
        emit = self.__dict__.get(EMIT_ATTR)
        scale, zero = (emit[0], emit[1]) if emit else out_grid
        op = ops[2] if self.__dict__.get(RELU_ATTR) else ops[1]
        if ops[1] is _CONV_OPS[1]:
            packed = self._packed_for_call(x, (scale, zero, op is ops[2]), build)
        if getattr(op, "takes_float", False):  # quantizes a float input itself
            kw = {"in_affine": in_affine} if in_affine is not None else {}
            qy = op(x, packed, scale, zero, in_grid=in_grid, **kw)
        else:
            x = x if in_affine is None else x * in_affine[0] + in_affine[1]
            qy = op(self._quantize_input(x, in_grid), packed, scale, zero)
        return qy if emit else _as_input(qy.dequantize(), x, self.codes)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._on_engine(x):
            return self._simulated(x, lambda v: WeightFormat.linear(self, v, bias))
        flat = (x if x.dim() == 2 else x.reshape(-1, x.shape[-1])).contiguous()
        engine = DYNAMIC_LINEAR_ENGINES.get(self.__dict__.get(ENGINE_ATTR))  # type: ignore[arg-type]
        if engine is not None and self.activations == "dynamic":
            y = self._engine_state(lambda: engine(*self._weights(bias)))[0](flat)
        elif self.__dict__.get(ENGINE_ATTR) == "native" and self.activations == "static":
            from modelzip.kernels import int8_static_gemm as gemm

            def build() -> Any:
                w = self._weights(bias)
                return gemm.prepack(*w, lambda: prepack_linear(*w))

            y = self._run((None, gemm.linear_op, gemm.linear_relu_op), flat, build)
        else:
            y = self._run(_LINEAR_OPS, flat, lambda: prepack_linear(*self._weights(bias)))
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])

    def conv2d(
        self, x: torch.Tensor, geometry: ConvGeometry, bias: torch.Tensor | None
    ) -> torch.Tensor:
        affine = self.__dict__.get(INPUT_AFFINE_ATTR)
        g, engine = geometry, self.__dict__.get(ENGINE_ATTR)
        native = engine == "native" and self.activations == "static"
        if affine is not None and not (native and self._on_engine(x, g) and not x.is_quantized):
            x, affine = x * affine[0] + affine[1], None  # only the native kernel takes it
        if not self._on_engine(x, geometry):
            return self._simulated(x, lambda v: WeightFormat.conv2d(self, v, geometry, bias))
        if native:
            from modelzip.kernels import int8_small_conv as small

            def build() -> Any:
                w = self._weights(bias)
                args = (g.stride, g.padding, g.dilation, g.groups)
                return small.prepack(*w, *args, lambda: prepack_conv2d(*w, *args))  # type: ignore[arg-type]

            return self._run((None, small.conv_op, small.conv_relu_op), x, build, affine)
        return self._run(_CONV_OPS, x, lambda: prepack_conv2d(
            *self._weights(bias), g.stride, g.padding, g.dilation, g.groups, engine  # type: ignore[arg-type]
        ))  # fmt: skip


def _as_input(y: torch.Tensor, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``y`` NCHW when the layer is (its codes) and its float input ``x`` is: oneDNN's int8 convs
    write channels-last whatever they read, and a model's ``.view`` of what it takes for an NCHW
    output fails on it. A model deployed channels-last (its codes so) keeps that layout."""
    if y.dim() != 4 or y.is_contiguous() or x.is_quantized or not codes.is_contiguous():
        return y
    nchw = x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    return y.contiguous() if nchw else y


@register_layer
class Int8DynamicConv2d(Int8Format, CompressedConv2d):
    """An int8 convolution run by the x86 engine's dynamic-quantized ``conv2d`` (input quantized
    per call): the int8 format with the ``"dynamic"`` policy, the form
    :func:`modelzip.deploy.materialize` builds from an ``Int8Conv2d``."""

    onnx_export = (
        "refused: it runs PyTorch's dynamic int8 conv kernel, which has no ONNX form; export the "
        "model before materializing it"
    )
    policy = "dynamic"

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> Int8DynamicConv2d:
        """From an ``Int8Conv2d`` (its codes, scales and bias)."""
        return dense.with_activations("dynamic", cls)  # type: ignore[operator]

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8DynamicConv2d:
        old = spec.get("conv_args", {})  # files of this class kept ``bias`` in ``conv_args``
        return super().from_spec({"bias": old["bias"], **spec} if "bias" in old else spec)


__all__ = [
    "ACTIVATIONS",
    "EMIT_ATTR",
    "FOLD_ATTR",
    "RELU_ATTR",
    "Int8DynamicConv2d",
    "Int8Format",
    "conv2d_dynamic",
    "int8_matmul",
    "linear_dynamic",
    "prepack_conv2d",
    "prepack_linear",
    "qparams",
    "quantize_symmetric_int8",
    "reduced_qparams",
]
