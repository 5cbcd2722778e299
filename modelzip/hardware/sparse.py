"""Sparse engines: zero weights skipped, zero activations gated or skipped, outputs speculated.

``weight_skip`` (Cambricon-X, Zhang et al. MICRO 2016; EIE, Han et al. ISCA 2016)
    Only non-zero weights are stored, read and multiplied; each carries an ``index_bits`` index,
    so weight storage is ``density * (1 + index_bits / weight_bits)`` of dense (more than dense at
    0 % sparsity). Cycles shrink with density, but PEs of a ``lane_group`` wait for the slowest:
    with unstructured sparsity the lane with the most non-zeros of ``n`` weights sets the pace,
    ``E[max] ~ n d + sqrt(n d (1 - d)) * sqrt(2 ln lanes)`` (the Gaussian bound on the maximum of
    binomials); structured sparsity (blocks, N:M, channels) keeps lanes balanced.
``act_skip``
    ``"gate"``: a zero activation turns the multiplier off (Eyeriss): MAC energy x density, no
    cycle gain. ``"skip"``: its cycle is saved too (Cnvlutin, Albericio et al. ISCA 2016).
    Both pay a zero detector on every activation (``ZERO_DETECT`` of a MAC).
``act_compression``
    Activations move to and from DRAM as Eyeriss's run-length code: pairs of an ``r``-bit zero run
    and a ``b``-bit value, one pair per non-zero plus one per run longer than ``2^r - 1``.
``output_speculation`` (SnaPEA, Akhlaghi et al. ISCA 2018)
    For a fraction ``f`` of outputs that end negative before a ReLU (the pruning issue's predictor
    statistics, passed as ``output_sparsity``), only a ``prefix`` of the MACs runs before the sign
    is known; MACs x ``1 - f (1 - prefix)``, plus a sign check per MAC. ``f`` is the measured
    output sparsity (``Workload.out_sparsity``), or a predictor's measured skip fraction
    (``Workload.predicted_skip``) when one was attached.
``output_prediction`` (decoupled predict-then-execute: SeerNet, Cao et al. CVPR 2019; the
    predictive ReLU units the pruning family simulates)
    A first pass at ``predictor_bits`` computes every output's sign estimate; the second, full
    precision pass computes only the outputs not predicted negative. With ``c`` predictor MACs
    per dense MAC (``Workload.predictor_cost``, measured; 1 when no predictor was attached: a full
    low-precision pass) and ``f`` the predicted fraction: MACs x ``1 - f``, cycles x
    ``1 - f + c (p / word)^2`` (``(word / p)^2`` low-bit products fit one word multiplier, as in
    Bit Fusion) and energy ``c (p / word)^2`` of a MAC per dense MAC for the predictor.

Weight sparsity is costed as structured (no load imbalance) when the workload says its zeros form
N:M groups, blocks or vectors (``Workload.weight_structure``, read from the weight itself), unless
the caller overrides it.
"""

from __future__ import annotations

import dataclasses
import math

from modelzip.core.workload import Workload
from modelzip.hardware.spec import AcceleratorSpec

ZERO_DETECT = 0.02  # energy of a zero check, as a fraction of one MAC
SIGN_CHECK = 0.02  # energy of SnaPEA's sign check per MAC, as a fraction of one MAC


@dataclasses.dataclass(frozen=True)
class SparseEffect:
    """Multipliers that a sparse engine applies to a dense layer's counts."""

    mac_fraction: float = 1.0  # MACs whose energy is spent
    cycle_fraction: float = 1.0  # compute cycles, after load imbalance
    weight_factor: float = 1.0  # weight bytes (DRAM and SRAM), indices included
    ifmap_dram_factor: float = 1.0
    ofmap_dram_factor: float = 1.0
    overhead_per_mac: float = 0.0  # extra energy per dense MAC, as a fraction of a MAC
    imbalance: float = 1.0


def lane_imbalance(density: float, n: int, lanes: int, structured: bool) -> float:
    """Slowest lane over the mean lane for ``n`` weights per lane at ``density`` (>= 1)."""
    if structured or density >= 1.0 or lanes <= 1 or density <= 0.0:
        return 1.0
    mean = n * density
    std = math.sqrt(n * density * (1.0 - density))
    return min(1.0 / density, (mean + std * math.sqrt(2.0 * math.log(lanes))) / max(mean, 1.0))


def rlc_factor(sparsity: float, bits: int, run_bits: int) -> float:
    """Size of run-length coded activations over dense ones (Eyeriss RLC)."""
    max_run = 2**run_bits - 1
    pairs = (1.0 - sparsity) + sparsity / (max_run + 1)
    return pairs * (bits + run_bits) / bits


def sparse_effect(
    spec: AcceleratorSpec,
    w: Workload,
    weight_bits: int,
    act_bits: int,
    *,
    structured: bool | None = None,
    output_sparsity: float | None = None,
    speculation_prefix: float = 0.5,
) -> SparseEffect:
    """How ``spec``'s sparsity support changes ``w``'s MACs, cycles and traffic.

    Parameters
    ----------
    structured
        True when the zero weights come in blocks or N:M groups (no load imbalance); default
        from ``w.weight_structure``.
    output_sparsity
        Fraction of outputs zero after the activation; defaults to the measured
        ``w.out_sparsity``.
    speculation_prefix
        Fraction of a negative output's MACs run before SnaPEA stops it.
    """
    s = spec.sparse
    if not s.any:
        return SparseEffect()
    mac_fraction, cycle_fraction, overhead = 1.0, 1.0, 0.0
    weight_factor, ifmap_factor, ofmap_factor, imbalance = 1.0, 1.0, 1.0, 1.0
    if structured is None:
        structured = w.weight_structure != "unstructured"
    if s.weight_skip:
        density = 1.0 - w.weight_sparsity
        imbalance = lane_imbalance(density, w.R * w.S * w.C, s.lane_group, structured)
        mac_fraction *= density
        cycle_fraction *= min(1.0, density * imbalance)
        weight_factor = density * (1.0 + s.index_bits / weight_bits)
    if s.act_skip != "none":
        density = 1.0 - w.act_sparsity
        mac_fraction *= density
        overhead += ZERO_DETECT
        if s.act_skip == "skip":
            cycle_fraction *= min(1.0, density * lane_imbalance(density, w.C, s.lane_group, False))
    out_sparsity = w.out_sparsity if output_sparsity is None else output_sparsity
    # A measured predictor says which outputs it catches; without one, the engine is taken to
    # catch the outputs that end up zero (an exact sign predictor).
    caught = w.predicted_skip if w.predicted_skip > 0 and output_sparsity is None else out_sparsity
    if s.act_compression:
        ifmap_factor = rlc_factor(w.act_sparsity, act_bits, s.rlc_run_bits)
        ofmap_factor = rlc_factor(out_sparsity, act_bits, s.rlc_run_bits)
    if s.output_speculation:
        saved = caught * (1.0 - speculation_prefix)
        mac_fraction *= 1.0 - saved
        cycle_fraction *= 1.0 - saved
        overhead += SIGN_CHECK
    if s.output_prediction:
        cost = w.predictor_cost if w.predictor_cost > 0 else 1.0
        narrow = (min(s.predictor_bits, spec.word_bits) / spec.word_bits) ** 2
        mac_fraction *= 1.0 - caught
        cycle_fraction *= 1.0 - caught + cost * narrow
        overhead += cost * narrow
    return SparseEffect(
        mac_fraction=mac_fraction,
        cycle_fraction=cycle_fraction,
        weight_factor=weight_factor,
        ifmap_dram_factor=ifmap_factor,
        ofmap_dram_factor=ofmap_factor,
        overhead_per_mac=overhead,
        imbalance=imbalance,
    )
