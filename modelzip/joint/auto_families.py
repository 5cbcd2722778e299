"""The whole-model candidates of ``auto``: every family, and compositions as ordered recipes.

``auto`` searches two kinds of candidate and chooses among all of them:

- ``layer``: one method per layer at its knob value (:mod:`modelzip.joint.search`), the methods
  of :class:`~modelzip.joint.sensitivity.SensitivityConfig` (decompositions, weight
  quantization, magnitude pruning);
- whole-model recipes, one family or an ordered composition of steps, each step's number taken
  from its method's :class:`~modelzip.core.registry.Knob` (declared at registration):

  ==========================  ===========================================================
  ``channel_prune``           ``[channel_prune s]``: filters removed, a smaller dense model
  ``int8``                    ``[int8 static]``: calibrated int8 activations and weights
  ``channel_prune+int8``      ``[channel_prune s, int8 static]``
  ``prune+quantize``          ``[magnitude_prune s, sparse_quantize b]`` (the joint form) and
                              ``[magnitude_prune s, quantize_weights b]``
  ``decompose+quantize``      ``[svd r, quantize_weights b]``, ``[tucker2 r, quantize_weights b]``
  ==========================  ===========================================================

A composition is *available* when ``compress`` stacks its steps: each later step reaches the
layers an earlier one compressed. :func:`availability` probes that on the model; a composition
that ``compress`` does not stack yet (a later step skips the layers the first one changed) is
kept in the trail as unavailable, with the skip's reason, and switches on by itself when it does.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from torch import nn

from modelzip.core.config import MethodConfig

#: Every family ``auto`` may search, in the order the trail lists them.
FAMILIES: tuple[str, ...] = (
    "layer",
    "channel_prune",
    "int8",
    "channel_prune+int8",
    "prune+quantize",
    "decompose+quantize",
)

#: Steps that run after the fine-tune of the chosen model: a calibrated int8 model is not trained.
POST_TRAINING = ("int8",)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One whole-model recipe: its family, a name such as ``channel_prune+int8 s=0.5``, steps."""

    family: str
    name: str
    steps: tuple[MethodConfig, ...]

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(step.method for step in self.steps)


def _knob_step(method: str, value: float, **fields: Any) -> MethodConfig:
    from modelzip.core.registry import get_method
    from modelzip.joint.sensitivity import knob_of

    return knob_of(method).config(get_method(method).config_type, value, **fields)


def _static_int8() -> MethodConfig:
    from modelzip.quantize.int8_method import Int8Config

    return Int8Config(activations="static")


def family_candidates(families: tuple[str, ...], sensitivity: Any) -> list[Candidate]:
    """The whole-model candidates of ``families`` (``layer`` has none: it is the per-layer
    search). Channel sparsities are channel_prune's registered knob values; sparsities,
    bit-widths and rank fractions of the compositions are those of ``sensitivity`` (a
    :class:`~modelzip.joint.sensitivity.SensitivityConfig`), sparsity 0 left out."""
    from modelzip.joint.sensitivity import knob_of

    channel = knob_of("channel_prune").values
    sparsities = [s for s in sensitivity.sparsities if s > 0]
    bits = list(sensitivity.bit_widths)
    ranks = list(sensitivity.rank_fractions)
    out: list[Candidate] = []

    def add(family: str, *steps: MethodConfig) -> None:
        out.append(Candidate(family, " + ".join(_label(step) for step in steps), steps))

    for family in families:
        if family == "channel_prune":
            for s in channel:
                add(family, _knob_step("channel_prune", s))
        elif family == "int8":
            add(family, _static_int8())
        elif family == "channel_prune+int8":
            for s in channel:
                add(family, _knob_step("channel_prune", s), _static_int8())
        elif family == "prune+quantize":
            for second in ("sparse_quantize", "quantize_weights"):
                for s, b in itertools.product(sparsities, bits):
                    add(family, _knob_step("magnitude_prune", s), _quant_step(second, b))
        elif family == "decompose+quantize":
            for first in ("svd", "tucker2"):
                for r, b in itertools.product(ranks, bits):
                    add(family, _knob_step(first, r), _knob_step("quantize_weights", b))
    return out


def _label(step: MethodConfig) -> str:
    """``channel_prune sparsity=0.5``, ``int8 activations=static``."""
    from modelzip.core.registry import get_method

    knob = get_method(step.method).knob
    if knob is not None:
        return f"{step.method} {knob.field}={getattr(step, knob.field):g}"
    activations = getattr(step, "activations", None)
    return step.method + (f" activations={activations}" if activations else "")


def _quant_step(method: str, bits: int) -> MethodConfig:
    if method == "sparse_quantize":
        from modelzip.joint.sparse_quant import SparseQuantizeConfig

        return SparseQuantizeConfig(bits=int(bits))
    return _knob_step(method, bits)


def availability(model: nn.Module, candidate: Candidate, data: Any, sample: Any) -> str:
    """``""`` when ``compress`` applies every step of ``candidate`` to ``model``, else why not:
    a step that changed no layer, or a later step that skipped a layer an earlier step had
    compressed (the steps did not stack)."""
    from modelzip.api import compress

    try:
        _, report = compress(model, list(candidate.steps), data, sample=sample,
                             evaluate=False, measure=False, deploy=False)  # fmt: skip
    except Exception as e:  # a refusal is the answer, not a failure of the search
        return f"compress refused it: {type(e).__name__}: {e}"
    changed: dict[str, set[str]] = {}
    for layer in report.layers:
        changed.setdefault(layer.method, set()).add(layer.name)
    for k, step in enumerate(candidate.steps):
        if step.method not in changed:
            why = next((s.reason for s in report.skipped if s.method == step.method), "")
            return f"{step.method} changed no layer" + (f": {why}" if why else "")
        earlier = set().union(*(changed.get(s.method, set()) for s in candidate.steps[:k]))
        for skip in report.skipped:
            if skip.method == step.method and skip.name in earlier:
                return (
                    f"{step.method} does not stack on {candidate.steps[0].method} yet: it skipped "
                    f"{skip.name}, which an earlier step compressed ({skip.reason})"
                )
    return ""


def describe_steps(steps: list[MethodConfig] | tuple[MethodConfig, ...]) -> list[dict[str, Any]]:
    """Per step ``{layer, method, knob, value}`` (layer: the selected names, or ``(model)``)."""
    from modelzip.core.registry import get_method

    out = []
    for step in steps:
        knob = get_method(step.method).knob
        names = step.select.names
        out.append(
            {
                "layer": ",".join(names) if names else "(model)",
                "method": step.method,
                "knob": None if knob is None else knob.field,
                "value": None if knob is None else getattr(step, knob.field),
            }
        )
    return out


def split_post_training(steps: list[MethodConfig]) -> tuple[list[MethodConfig], list[MethodConfig]]:
    """``(trained, after)``: the trailing steps of :data:`POST_TRAINING` methods run after the
    fine-tune (a calibrated int8 model is deployed, not trained)."""
    k = len(steps)
    while k and steps[k - 1].method in POST_TRAINING:
        k -= 1
    return list(steps[:k]), list(steps[k:])
