"""``materialize(model)``: compressed modules → the fastest executable form this CPU has.

Each layer class declares the forms it offers (``executable_forms``, built by
:mod:`modelzip.kernels.forms`); by class, so an attribute that happens to share a name (the
``codes`` and ``scale`` of a k-bit :class:`~modelzip.quantize.layers.QuantLinear`) does not make
a layer int8. Today:

=============================================  ==============================================
masked layer (``Masked*``)                      :class:`SparseLinear`/:class:`SparseConv2d`
                                                (BSR when the zeros form blocks, else CSR) if
                                                measured faster on the sample, else plain dense
int8 layer (``Int8Linear``/``Int8Conv2d``)      PyTorch's x86 int8 kernels (dynamic activations);
                                                a linear also modelzip's native kernel or
                                                onnxruntime's GEMM, whichever is measured faster
static int8 layer (``StaticInt8*``)             kept (the int8 engine), or its weights
                                                dequantized into the float layer when measured
                                                faster (int8 tolerance: no activation rounding)
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
Two choices are made for the whole model, as no layer alone can show they pay: static int8
layers hand each other uint8 (the int8 chain), and runs of pruned linears in CSR run as one
compiled call skipping zero activations (:mod:`modelzip.kernels.sparse_chain`, EIE's batch-1
product), kept when the whole model is measured faster on the sample. Last, a model with int8
activations is tried whole on onnxruntime (:mod:`modelzip.export.ort_link`: its int8 layers
exported as QDQ, one session), kept when measured faster than the PyTorch deployment.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from modelzip.core.compact_source import DEPLOYED_ATTR, LAYOUT_ATTR, SOURCE_ATTR, compact_source
from modelzip.core.compressed import drop_decoded_weights
from modelzip.core.context import replace_module
from modelzip.core.model_links import unlink
from modelzip.core.running import model_device
from modelzip.deploy.chains import (
    link_int8_chain,
    link_int8_runs,
    link_sparse_runs,
    link_xnor_inputs,
)
from modelzip.deploy.layer_choice import Pick, choose_form, deployable_layers
from modelzip.deploy.layout import choose_layout, dense_anchor
from modelzip.deploy.model_choice import (
    PER_LAYER,
    assemble,
    choose_model,
    tolerance_of,
    variants_of,
)
from modelzip.deploy.report import TOLERANCE, LayerMaterialization, MaterializeReport, rel_error
from modelzip.deploy.runtime_choice import choose_runtime
from modelzip.deploy.timing import time_against


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
    given = model
    model.eval()
    device = model_device(model)
    if device.type != "cpu":  # the kernels (Numba, the native builds) run on the CPU alone
        note = f"not deployed: the model is on {device.type}; modelzip's kernels run on the CPU"
        return model, MaterializeReport([], note=note)
    inputs: dict[str, torch.Tensor] = {}
    args = sample if isinstance(sample, tuple) else (sample,)
    ref = None
    if sample is not None:

        def recorder(n: str) -> Callable[..., None]:
            def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: Any) -> None:
                inputs.setdefault(n, inp[0].detach())  # a hook's return value replaces output

            return hook

        hooks = [m.register_forward_hook(recorder(n)) for n, m in deployable_layers(model)]
        with torch.no_grad():
            ref = model(*args)
        for h in hooks:
            h.remove()
    report = MaterializeReport([])
    picks: list[Pick] = []
    for name, module in deployable_layers(model):
        chosen, entry, built = choose_form(name, module, inputs.get(name), reps, choose)
        report.layers.append(entry)
        picks.append(Pick(name, module, chosen, entry, built))
    measured = ref is not None and choose == "measured" and isinstance(sample, torch.Tensor)
    variants = variants_of(picks) if measured else {}
    # Every whole-model candidate is checked against the compressed model's own tolerance (a
    # static int8 model's dense candidate rounds no activations, and differs by that much).
    tolerance = tolerance_of(model)
    # The other whole-model candidates are built on copies of the model taken before the
    # per-layer choice replaces its layers (which it does in place, as before).
    others = {k: (copy.deepcopy(model), v) for k, v in variants.items() if k != PER_LAYER}
    assemble(model, {p.name: (p.chosen, p.entry.form) for p in picks}, picks, copy_layers=False)
    model = link_int8_chain(model, args if sample is not None else None, ref, report)
    model = link_xnor_inputs(model, args if sample is not None else None, ref, report)
    model = link_int8_runs(model, args if sample is not None else None, ref, report)
    if sample is not None and ref is not None:
        model = link_sparse_runs(model, picks, args, ref, reps, choose, report)
    if not others:
        model = choose_layout(model, sample, ref, layout, reps, report)
    else:
        model = choose_model(model, others, picks, args, ref, layout, reps, report, tolerance)
    if measured:
        model = choose_runtime(model, sample, ref, reps, report)  # type: ignore[arg-type]
    if ref is not None:
        with torch.no_grad():
            report.max_rel_error = rel_error(model(*args), ref)
    drop_decoded_weights(model)
    return (_into(given, model) if inplace else model), report


def _into(given: nn.Module, chosen: nn.Module) -> nn.Module:
    """For ``inplace``: the deployed layers of ``chosen`` (a whole-model candidate built on a
    copy, or a linked GraphModule's eager model) put into ``given``, the caller's own object,
    which is returned; or the linked GraphModule, now running ``given``'s layers (the caller's
    model is deployed in place; the links are a wrapper around it)."""
    eager = chosen.__dict__.get("_modelzip_eager", chosen)
    if eager is not given:
        for name, child in eager._modules.items():  # every name (named_children skips aliases)
            setattr(given, name, child)
        given.__dict__.update(
            {k: v for k, v in eager.__dict__.items() if k.startswith("_modelzip_")}
        )
    if eager is chosen:
        return given
    chosen.__dict__["_modelzip_eager"] = given
    return chosen


def is_deployed(model: nn.Module) -> bool:
    """Whether ``model`` is a deployed (inference-only) model: the output of :func:`materialize`
    or of :func:`modelzip.load` of a file saved deployed."""
    return bool(model.__dict__.get(DEPLOYED_ATTR))


def trainable(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The trainable form of a deployed model: every deployed layer back to the compressed layer
    it was built from, parameters requiring grad again, contiguous memory layout.

    A model that is not deployed is returned as it is (copied unless ``inplace``).
    :func:`modelzip.compress` calls this first, so a deployed model can take more recipe steps.
    """
    if not is_deployed(model):
        return model if inplace else copy.deepcopy(model)
    model = model if inplace else copy.deepcopy(model)
    # Unlinked first: a chained GraphModule holds the layers of an eager model it returns, so
    # layers replaced in the GraphModule alone would stay deployed in that eager model.
    model = unlink(model)
    for name, module in list(model.named_modules()):
        source = compact_source(module)
        if source is None:
            continue
        layer = source.layer().train(model.training)
        if not name:
            # The model's own notes (its source, its recipe) stay with it.
            notes = {k: v for k, v in model.__dict__.items() if k.startswith("_modelzip_")}
            for k in (DEPLOYED_ATTR, LAYOUT_ATTR, SOURCE_ATTR):
                notes.pop(k, None)
            layer.__dict__.update(notes)
            model = layer
            break
        replace_module(model, name, layer)
    for p in model.parameters():
        p.requires_grad_(True)
    if model.__dict__.pop(LAYOUT_ATTR, None) == "channels_last":
        model.to(memory_format=torch.contiguous_format)
    model.__dict__.pop(DEPLOYED_ATTR, None)
    return model


__all__ = [
    "TOLERANCE",
    "LayerMaterialization",
    "MaterializeReport",
    "dense_anchor",
    "is_deployed",
    "materialize",
    "time_against",
    "trainable",
]
