"""Quantized processing elements: fixed bit-parallel, XNOR-popcount, bit-serial and Bit Fusion.

Each PE kind turns a layer's ``(weight_bits, act_bits)`` into a cycle factor (PE-cycles per MAC
relative to one bit-parallel ``word_bits x word_bits`` MAC per cycle), an energy per MAC and an
area per PE:

``bit_parallel``  a fixed ``word_bits`` multiplier: one MAC per cycle whatever the layer's bits
                  (wider layers take ``ceil(w / word) * ceil(a / word)`` passes); unused high bits
                  are gated, so energy follows ``w * a``.
``xnor``          a ``word_bits``-wide XNOR and popcount: ``word_bits`` binary MACs per cycle; a
                  layer of ``w x a`` bits runs as ``w * a`` binary bit-planes (Rastegari et al.,
                  XNOR-Net, 2016; Umuroglu et al., FINN, 2017).
``stripes``       activations bit-serial (Judd et al., MICRO 2016): cycles scale with
                  ``act_bits / word_bits``, so a layer at precision ``p`` runs ``16 / p`` faster
                  than a 16-bit bit-parallel engine of equal 16-bit peak throughput.
``loom``          weights and activations bit-serial (Sharify et al., DAC 2018): cycles scale with
                  ``w * a / word_bits^2``.
``bitfusion``     2-bit BitBricks fused into ``w x a`` multipliers (Sharma et al., ISCA 2018): a
                  fusion unit of ``(word_bits / b)^2`` bricks does ``bricks / (ceil(w/b) *
                  ceil(a/b))`` MACs per cycle, so 4-bit layers run 4x and 2-bit layers 16x faster
                  than 8-bit ones on an 8-bit unit; 16-bit operands take 4 cycles.

The shift-and-add of serial and fused designs is charged as ``SERIAL_OVERHEAD`` of the MAC energy
(Stripes reports a 1.92x average speedup but only 1.57x energy efficiency and 32 % more area;
the difference is this logic).
"""

from __future__ import annotations

import math

from modelzip.core.errors import ConfigError
from modelzip.hardware.energy import (
    RF_AREA_UM2_PER_KB,
    EnergyTable,
    adder_area_um2,
    mac_energy,
    multiplier_area_um2,
)
from modelzip.hardware.spec import AcceleratorSpec

SERIAL_OVERHEAD = 0.3  # extra energy per MAC for the shift-add of serial / fused PEs


def cycle_factor(spec: AcceleratorSpec, weight_bits: int, act_bits: int) -> float:
    """PE-cycles per MAC relative to one ``word_bits`` bit-parallel MAC per cycle."""
    word = spec.word_bits
    if spec.pe == "bit_parallel":
        return float(math.ceil(weight_bits / word) * math.ceil(act_bits / word))
    if spec.pe == "xnor":
        return weight_bits * act_bits / word
    if spec.pe == "stripes":
        return math.ceil(weight_bits / word) * act_bits / word
    if spec.pe == "loom":
        return weight_bits * act_bits / word**2
    if spec.pe == "bitfusion":
        b = spec.bitfusion_brick_bits
        bricks = (word // b) ** 2
        return math.ceil(weight_bits / b) * math.ceil(act_bits / b) / bricks
    raise ConfigError(f"unknown pe {spec.pe!r}")  # unreachable: the spec checks pe


def pe_mac_energy(
    spec: AcceleratorSpec, table: EnergyTable, weight_bits: int, act_bits: int
) -> float:
    """Energy of one MAC at the layer's bits on this PE (table units).

    Bit-parallel and XNOR PEs pay for the bits they use (gated high bits); serial and fused PEs pay
    the same partial products plus ``SERIAL_OVERHEAD`` for their shift-and-add.
    """
    w, a = weight_bits, act_bits
    if spec.pe == "xnor":  # one XNOR + popcount bit per partial product
        return mac_energy(table, w, a)
    if spec.pe == "bit_parallel":
        word = spec.word_bits
        return mac_energy(table, min(w, word), min(a, word)) * cycle_factor(spec, w, a)
    return mac_energy(table, w, a) * (1.0 + SERIAL_OVERHEAD)


def pe_area_um2(spec: AcceleratorSpec) -> float:
    """Area of one PE in um^2 (Horowitz 45 nm per-unit figures) including its registers / RF."""
    word = spec.word_bits
    regs = (3 * word / 8 + spec.rf_bytes) / 1024 * RF_AREA_UM2_PER_KB
    acc = adder_area_um2(2 * word + 8, spec.fp)
    if spec.pe == "bit_parallel":
        return multiplier_area_um2(word, word, spec.fp) + acc + regs
    if spec.pe == "xnor":
        # word_bits XNOR gates (~1 um^2 each at 45 nm) and a popcount tree (~ an adder per bit).
        return word * 1.0 + adder_area_um2(word) * math.log2(max(word, 2)) + regs
    if spec.pe in ("stripes", "loom"):
        # word_bits AND gates feeding an adder tree of word inputs, plus the serial shifter.
        return word * 1.0 + adder_area_um2(2 * word + 8) * 2 + acc + regs
    b = spec.bitfusion_brick_bits
    bricks = (word // b) ** 2
    # Bit Fusion reports its fusion unit at about the area of a fixed 8-bit MAC plus shift-add.
    return bricks * multiplier_area_um2(b, b) + acc * 2 + regs
