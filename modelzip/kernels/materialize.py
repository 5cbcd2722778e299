"""``materialize(model)``: compressed modules → the fastest executable form this CPU has.

For each layer it recognises (by its class: an attribute that happens to share a name, such as
the ``codes`` and ``scale`` of a k-bit :class:`~modelzip.quantize.layers.QuantLinear`, does not
make a layer int8):

=============================================  ==============================================
masked layer (``Masked*``)                      :class:`SparseLinear`/:class:`SparseConv2d`
                                                (BSR when the zeros form blocks, else CSR) if
                                                measured faster on the sample, else plain dense
int8 layer (``Int8Linear``/``Int8Conv2d``)      PyTorch's x86 int8 kernels (dynamic activations)
``nn.Linear``/``nn.Conv2d`` with ``±α`` rows    :class:`BinaryLinear`/:class:`BinaryConv2d`:
                                                XNOR-popcount when the sample's inputs are ±1,
                                                else BWN (adds/subtracts)
factorized layer (``tt_cores``/``ht_factors``)  kept factorized (MAC-minimal einsum), cut
                                                into two GEMMs (:class:`SplitLinear`), a TT-conv
                                                fused per 16-pixel tile (:class:`FusedTTConv2d`,
                                                AVX-512) or made dense, whichever is measured
                                                faster
fake-quantized layer (``FakeQuant*``)           its weights quantized once (frozen), or for a
                                                linear with k-bit inputs (``act_bits`` ≤ 8)
                                                :class:`BitSerialLinear` (AND-popcount over bit
                                                planes), whichever is measured faster (no
                                                bit-serial conv yet)
=============================================  ==============================================

With a sample batch every replacement is checked against the original layer on the input that
layer saw, reverted if it disagrees, and the whole model's output is compared at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

# Relative tolerance (to the output's largest magnitude) per kind of kernel: integer kernels are
# exact, float kernels reorder sums, dynamic int8 quantizes the activations to 8 (7) bits.
TOLERANCE = {"exact": 1e-5, "float": 1e-4, "int8": 5e-2, "dense": 1e-5}


@dataclasses.dataclass
class LayerMaterialization:
    """What :func:`materialize` did with one layer."""

    name: str
    before: str
    after: str
    kernel: str
    reason: str
    max_rel_error: float | None = None
    speedup: float | None = None


@dataclasses.dataclass
class MaterializeReport:
    """Per-layer actions and the model-level check (``max_rel_error`` on the sample)."""

    layers: list[LayerMaterialization]
    max_rel_error: float | None = None
    layout: str = "contiguous"
    layout_reason: str = "not measured"

    def rows(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(layer) for layer in self.layers]

    def __str__(self) -> str:
        lines = [f"{'layer':<24} {'before':<14} {'after':<20} {'speedup':>8} {'rel.err':>9}  why"]
        for r in self.layers:
            sp = f"{r.speedup:.2f}×" if r.speedup is not None else "-"
            err = f"{r.max_rel_error:.1e}" if r.max_rel_error is not None else "-"
            lines.append(f"{r.name:<24} {r.before:<14} {r.after:<20} {sp:>8} {err:>9}  {r.reason}")
        lines.append(f"memory layout: {self.layout} ({self.layout_reason})")
        if self.max_rel_error is not None:
            lines.append(f"model output: max relative error {self.max_rel_error:.2e}")
        return "\n".join(lines)


def _rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    scale = float(ref.detach().abs().max()) or 1.0
    return float((y.detach().float() - ref.detach().float()).abs().max()) / scale


def _time_interleaved(modules: list[nn.Module], x: torch.Tensor, reps: int) -> list[float]:
    """Median seconds of ``m(x)`` for each module, the runs interleaved so that a busy machine
    slows all candidates alike."""
    times: list[list[float]] = [[] for _ in modules]
    with torch.no_grad():
        for _ in range(reps):
            for i, m in enumerate(modules):
                t = time.perf_counter()
                m(x)
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def _is_pm1(x: torch.Tensor | None) -> bool:
    return x is not None and bool(((x == 1) | (x == -1)).all())


def _candidate(
    module: nn.Module, x: torch.Tensor | None
) -> list[tuple[str, Callable[[], nn.Module]]]:
    """Executable forms to try for ``module``, each ``(kind, builder)``; the first that is
    correct and fastest wins (the module itself is always a candidate)."""
    from modelzip.kernels.sparse import detect_block

    family = _kind(module)
    if family == "masked":
        from modelzip.kernels.sparse_layers import SparseConv2d, SparseLinear

        dense = module.to_dense()
        cls = SparseLinear if isinstance(dense, nn.Linear) else SparseConv2d
        if isinstance(dense, nn.Conv2d) and (dense.groups != 1 or isinstance(dense.padding, str)):
            return [("dense", lambda: dense)]
        block = detect_block(module.masked_weight())
        fmt = f"BSR {block}×{block}" if block > 1 else "CSR"
        return [("dense", lambda: dense), (f"float:{fmt}", lambda: cls.from_dense(module, block))]
    if family == "int8":
        from modelzip.quantize.int8 import Int8Linear

        if isinstance(module, Int8Linear):

            def dynamic() -> nn.Module:
                new = type(module).from_spec({**module.spec(), "activations": "dynamic"})
                new.load_state_dict(module.state_dict())
                return new.eval()

            return [("int8:x86 linear_dynamic", dynamic)]
        if not isinstance(module.conv_args["padding"], str):  # an Int8Conv2d
            from modelzip.kernels.int8 import Int8DynamicConv2d

            return [("int8:x86 conv2d_dynamic", lambda: Int8DynamicConv2d.from_dense(module))]
        return []
    if family == "fake_quant":
        from modelzip.quantize.fake import FakeQuantLinear

        options = [("dense", lambda: _frozen_fake_quant(module))]
        if isinstance(module, FakeQuantLinear) and module.act is not None:
            from modelzip.kernels.bitserial_layers import BitSerialLinear, grid_codes

            if int(module.act.bits) <= 8 and grid_codes(module.quantized_weight()) is not None:
                build = lambda: BitSerialLinear.from_fake_quant(module)  # noqa: E731
                options.append(("float:bit-serial AND-popcount", build))
        return options
    if family == "dense":
        from modelzip.kernels.layers import BinaryConv2d, BinaryLinear, binary_scales

        if binary_scales(module.weight) is None:
            return []
        if isinstance(module, nn.Conv2d) and (
            module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros"
        ):
            return []
        cls = BinaryLinear if isinstance(module, nn.Linear) else BinaryConv2d
        mode = "xnor" if _is_pm1(x) else "bwn"
        kind = "exact:XNOR-popcount" if mode == "xnor" else "float:BWN add/sub"
        return [(kind, lambda: cls.from_dense(module, mode))]
    if family == "factorized" and hasattr(module, "to_dense"):
        options: list[tuple[str, Callable[[], nn.Module]]] = [("dense", module.to_dense)]
        if hasattr(module, "factor_indices") and hasattr(module, "in_modes"):
            from modelzip.kernels.split_linear import SplitLinear, plan_cut

            cut = plan_cut(module)
            if cut is not None:
                options.append(
                    ("float:two-GEMM cut", lambda: SplitLinear.from_factorized(module, cut))
                )
        if hasattr(module, "spatial") and hasattr(module, "tt_cores") and x is not None:
            from modelzip.kernels.tt_conv import FusedTTConv2d

            fused = FusedTTConv2d.from_tt(module)
            with torch.no_grad():
                usable = fused.fused_unavailable(x) is None
            if usable:
                options.append(("float:fused TT-conv (AVX-512)", lambda: fused))
        return options
    return []


def materialize(
    model: nn.Module,
    sample: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    inplace: bool = False,
    reps: int = 5,
    choose: Literal["measured", "compressed"] = "measured",
    layout: Literal["measured", "contiguous", "channels_last"] = "measured",
) -> tuple[nn.Module, MaterializeReport]:
    """Turn compressed layers into their fastest executable form on this CPU.

    Parameters
    ----------
    model:
        A model with compressed layers (masked, int8, binarized, TT/HT); it is copied unless
        ``inplace``.
    sample:
        An input batch. With it, choices between kernels are measured on the input each layer
        actually sees (median of ``reps`` interleaved runs) and every replacement is checked
        against the layer it replaces; without it, every recognised layer takes its compressed
        kernel unchecked (binary layers take BWN).
    choose:
        ``"measured"``: each layer takes its fastest correct form; ``"compressed"``: the
        compressed kernel whenever it passes the check, even if measured slower (for memory, or
        on a machine too busy to time).
    layout:
        Memory format of a model with 4-D conv weights: ``"measured"`` times the whole model in
        NCHW and in channels-last on the sample and keeps the faster (oneDNN's NHWC kernels are
        often faster at small channel counts); the others force one. Models without convs, and
        ``"measured"`` without a sample, stay contiguous.

    Returns
    -------
    (model, report):
        The executable model (eval mode, parameters frozen: the kernels are inference-only) and
        a :class:`MaterializeReport`.
    """
    if layout not in ("measured", "contiguous", "channels_last"):
        raise ValueError(
            f"layout={layout!r} is not allowed; allowed: 'measured', 'contiguous', 'channels_last'"
        )
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    inputs: dict[str, torch.Tensor] = {}
    args = sample if isinstance(sample, tuple) else (sample,)
    ref = None
    if sample is not None:

        def recorder(n: str) -> Callable[..., None]:
            def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: Any) -> None:
                inputs.setdefault(n, inp[0].detach())  # a hook's return value replaces output

            return hook

        hooks = [
            m.register_forward_hook(recorder(n))
            for n, m in model.named_modules()
            if n and _candidate_cheap(m)
        ]
        with torch.no_grad():
            ref = model(*args)
        for h in hooks:
            h.remove()
    report = MaterializeReport([])
    for name, module in list(model.named_modules()):
        if not name or not _candidate_cheap(module):
            continue
        x = inputs.get(name)
        chosen, entry = _choose(name, module, x, reps, choose)
        report.layers.append(entry)
        if chosen is not module:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, chosen)
    for p in model.parameters():  # an inference model: the kernels have no backward
        p.requires_grad_(False)
    model = _choose_layout(model, sample, ref, layout, reps, report)
    if ref is not None:
        with torch.no_grad():
            report.max_rel_error = _rel_error(model(*args), ref)
    return model, report


def _frozen_fake_quant(module: nn.Module) -> nn.Module:
    """The fake-quantized layer with its quantized weight computed once (scheme ``none``): the
    same outputs without re-quantizing the weights on every call."""
    frozen = type(module).from_spec({**module.spec(), "scheme": "none"})
    with torch.no_grad():
        frozen.weight.copy_(module.quantized_weight())
        if module.bias is not None:
            frozen.bias.copy_(module.bias)
        if module.act is not None:
            frozen.act.alpha.copy_(module.act.alpha)
    return frozen.to(module.weight.device).eval()


def _has_conv(model: nn.Module) -> bool:
    return any(p.dim() == 4 for p in model.parameters())


def _choose_layout(
    model: nn.Module,
    sample: torch.Tensor | tuple[torch.Tensor, ...] | None,
    ref: Any,
    layout: str,
    reps: int,
    report: MaterializeReport,
) -> nn.Module:
    """Convert ``model`` to channels-last when asked, or when measured faster and equal."""
    if not _has_conv(model):
        report.layout_reason = "no 4-D weights"
        return model
    if layout == "contiguous":
        report.layout_reason = "asked for"
        return model
    if layout == "measured" and (not isinstance(sample, torch.Tensor) or ref is None):
        report.layout_reason = "no sample to measure on"
        return model
    candidate = copy.deepcopy(model).to(memory_format=torch.channels_last)
    if layout == "channels_last":
        report.layout, report.layout_reason = "channels_last", "asked for"
        return candidate
    try:
        with torch.no_grad():
            err = _rel_error(candidate(sample), ref)
    except (RuntimeError, ValueError) as e:
        report.layout_reason = f"channels-last failed: {e}"
        return model
    if err > TOLERANCE["float"]:
        report.layout_reason = f"channels-last disagrees (rel. error {err:.1e})"
        return model
    # Two warm-up calls each: oneDNN builds its kernels for a new layout on the first call.
    _time_interleaved([model, candidate], sample, 2)
    t_nchw, t_nhwc = _time_interleaved([model, candidate], sample, max(reps, 5))
    if t_nhwc < t_nchw:
        report.layout = "channels_last"
        report.layout_reason = f"measured {t_nchw / t_nhwc:.2f}× faster than NCHW"
        return candidate
    report.layout_reason = f"channels-last measured {t_nchw / t_nhwc:.2f}× the speed: kept NCHW"
    return model


def _kind(m: nn.Module) -> str | None:
    """Which family of layer ``m`` is, by its class, or ``None`` for a layer with no other form.

    By class and not by attribute names: a k-bit ``QuantLinear`` has ``codes`` and ``scale``
    too, and taken for int8 it crashed (or, worse, would have run the wrong kernel). Subclasses
    count (``StaticInt8Linear`` is an ``Int8Linear``); the executable layers of
    :mod:`modelzip.kernels` subclass none of these, so a materialized model is left as it is.
    """
    from modelzip.prune.masked import MaskedConv2d, MaskedLinear
    from modelzip.quantize.fake import FakeQuantConv2d, FakeQuantLinear
    from modelzip.quantize.int8 import Int8Conv2d, Int8Linear

    if isinstance(m, (MaskedLinear, MaskedConv2d)):
        return "masked"
    if isinstance(m, (Int8Linear, Int8Conv2d)):
        return "int8"
    if type(m) in (FakeQuantLinear, FakeQuantConv2d):
        return "fake_quant"
    if type(m) in (nn.Linear, nn.Conv2d):
        return "dense"
    if any(hasattr(m, a) for a in ("tt_cores", "ht_factors", "tucker_factors")):
        return "factorized"
    return None


def _candidate_cheap(m: nn.Module) -> bool:
    """Whether ``m`` may have an executable form (without building it)."""
    return _kind(m) is not None


def _choose(
    name: str, module: nn.Module, x: torch.Tensor | None, reps: int, choose: str
) -> tuple[nn.Module, LayerMaterialization]:
    before = type(module).__name__
    entry = LayerMaterialization(name, before, before, "unchanged", "no faster form")
    options = _candidate(module, x)
    if not options:
        if type(module) in (nn.Linear, nn.Conv2d):
            entry.reason = "dense weights (not ±α per row)"
        return module, entry
    if x is None:  # no sample: take the compressed kernel (the last option) unchecked
        kind, build = options[-1]
        new = build()
        entry.after, entry.kernel = type(new).__name__, kind.split(":")[-1]
        entry.reason = "no sample: compressed kernel taken unmeasured"
        return new, entry
    with torch.no_grad():
        ref = module(x)
    built: list[tuple[str, nn.Module]] = []
    for kind, build in options:
        try:
            new = build().eval()
            with torch.no_grad():
                err = _rel_error(new(x), ref)
        except (RuntimeError, ValueError) as e:
            entry.reason = f"{kind} failed: {e}"
            continue
        tol = TOLERANCE[kind.split(":")[0]]
        if err > tol:
            entry.reason = f"{kind} disagrees (rel. error {err:.1e} > {tol:.0e}): kept"
            continue
        built.append((kind, new))
        entry.max_rel_error = err
    times = _time_interleaved([module] + [m for _, m in built], x, reps)
    t_ref, best_t, best = times[0], times[0], module
    for (kind, new), t_new in zip(built, times[1:], strict=True):
        if t_new < best_t:
            best, best_t = new, t_new
            entry.after, entry.kernel = type(new).__name__, kind.split(":")[-1]
            entry.reason = f"measured {t_ref / t_new:.2f}× faster than {before}"
    if choose == "compressed" and built and best is not built[-1][1]:
        (kind, best), best_t = built[-1], times[-1]
        entry.after, entry.kernel = type(best).__name__, kind.split(":")[-1]
        entry.reason = f"compressed kernel asked for ({t_ref / best_t:.2f}× the speed)"
    if best is module and built:
        entry.max_rel_error = None
        entry.reason = "measured: " + ", ".join(
            f"{k.split(':')[-1]} {t_ref / t:.2f}×"
            for (k, _), t in zip(built, times[1:], strict=True)
        )
        entry.reason += f" the speed of {before}: kept"
    entry.speedup = t_ref / best_t
    return best, entry


__all__ = ["LayerMaterialization", "MaterializeReport", "materialize"]
