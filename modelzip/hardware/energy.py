"""Per-access energy and per-unit area tables: Eyeriss normalized costs, Horowitz's 45 nm figures.

Two tables are selectable on every :class:`~modelzip.hardware.spec.AcceleratorSpec`:

``eyeriss``
    Chen et al., "Eyeriss: A Spatial Architecture for Energy-Efficient Dataflow for CNNs",
    ISCA 2016, Fig. 1 / Table: energy of one 16-bit access normalized to one 16-bit MAC:
    MAC 1, register file (RF, ~0.5 kB) 1, PE-to-PE (array) 2, global buffer (~100 kB) 6,
    DRAM 200. Unit: ``normalized`` (multiples of a 16-bit MAC).

``horowitz``
    M. Horowitz, "Computing's Energy Problem (and what we can do about it)", ISSCC 2014, 45 nm,
    0.9 V: int add 0.03 pJ (8 b) / 0.1 pJ (32 b); int mult 0.2 pJ (8 b) / 3.1 pJ (32 b);
    fp add 0.4 pJ (16 b) / 0.9 pJ (32 b); fp mult 1.1 pJ (16 b) / 3.7 pJ (32 b);
    SRAM 64-bit read 10 pJ (8 kB), 20 pJ (32 kB), 100 pJ (1 MB); DRAM 1.3-2.6 nJ per 64 bits.
    Unit: ``pJ``.

Between the published points integer energies follow the circuit scaling the points themselves
show: a multiplier grows with the square of its width (0.2 pJ x (b/8)^2 gives 3.2 pJ at 32 b,
against 3.1 pJ measured), an adder linearly; SRAM energy per access grows with the square root of
capacity (10 pJ x sqrt(kB/8) gives 20 pJ at 32 kB and 113 pJ at 1 MB, against 100 pJ).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

from modelzip.core.frozen import ConfigBase, check_range

EnergyUnit = Literal["normalized", "pJ"]

# Horowitz ISSCC 2014, 45 nm: energies in pJ, areas in um^2.
HOROWITZ_INT_MULT_8B_PJ = 0.2
HOROWITZ_INT_ADD_8B_PJ = 0.03
HOROWITZ_FP_PJ = {16: (1.1, 0.4), 32: (3.7, 0.9)}  # bits -> (mult, add)
HOROWITZ_SRAM_8KB_64B_PJ = 10.0
HOROWITZ_DRAM_64B_PJ = (1300.0 + 2600.0) / 2  # the midpoint of the published 1.3-2.6 nJ range
HOROWITZ_INT_MULT_AREA_UM2 = {8: 282.0, 32: 3495.0}
HOROWITZ_INT_ADD_AREA_UM2 = {8: 36.0, 32: 137.0}
HOROWITZ_FP_AREA_UM2 = {16: (1640.0, 1360.0), 32: (7700.0, 4184.0)}  # bits -> (mult, add)
# No SRAM area is in Horowitz's table: a 45 nm 6T cell is 0.346 um^2 (Intel, 2007); at about 57 %
# array efficiency that is ~5,000 um^2 per kB. Register files built from flip-flops take about
# ten times the area per bit of a 6T array.
SRAM_AREA_UM2_PER_KB = 5000.0
RF_AREA_UM2_PER_KB = 50000.0

_MULT_AREA_EXPONENT = math.log(3495.0 / 282.0) / math.log(4.0)  # ~1.82, fit to the two points


@dataclasses.dataclass(frozen=True)
class EnergyTable(ConfigBase):
    """Energy of one access at each level for one word of ``word_bits`` bits.

    Memory-level energies scale linearly with the bits moved, the MAC's multiplier with the square
    of the operand width (see :func:`mac_energy`).
    """

    unit: EnergyUnit = "normalized"
    word_bits: int = 16
    mac: float = 1.0
    rf: float = 1.0
    array: float = 2.0
    buffer: float = 6.0
    dram: float = 200.0

    def validate(self) -> None:
        check_range(self, "word_bits", 1, 64)
        for name in ("mac", "rf", "array", "buffer", "dram"):
            check_range(self, name, 0.0)


@functools.lru_cache(maxsize=1)
def eyeriss_table() -> EnergyTable:
    """Eyeriss normalized costs (Chen et al., ISCA 2016): MAC, RF 1; array 2; buffer 6; DRAM 200."""
    return EnergyTable(
        unit="normalized", word_bits=16, mac=1.0, rf=1.0, array=2.0, buffer=6.0, dram=200.0
    )


def horowitz_sram_pj(kb: float, bits: int = 64) -> float:
    """SRAM access energy in pJ: ``10 pJ * sqrt(kB / 8)`` per 64-bit word (Horowitz 2014)."""
    kb = max(kb, 1e-3)
    return HOROWITZ_SRAM_8KB_64B_PJ * math.sqrt(kb / 8.0) * bits / 64.0


def horowitz_mult_pj(bits: int, fp: bool = False) -> float:
    """Multiplier energy in pJ at ``bits``: ``0.2 * (b/8)^2`` for integers, table values for fp."""
    if fp:
        return HOROWITZ_FP_PJ[16 if bits <= 16 else 32][0]
    return HOROWITZ_INT_MULT_8B_PJ * (bits / 8.0) ** 2


def horowitz_add_pj(bits: int, fp: bool = False) -> float:
    """Adder energy in pJ at ``bits``: ``0.03 * b/8`` for integers, table values for fp."""
    if fp:
        return HOROWITZ_FP_PJ[16 if bits <= 16 else 32][1]
    return HOROWITZ_INT_ADD_8B_PJ * bits / 8.0


@functools.lru_cache(maxsize=256)  # a frozen table; building one re-checks its fields
def horowitz_table(word_bits: int, rf_kb: float, buffer_kb: float, fp: bool = False) -> EnergyTable:
    """Horowitz 45 nm table in pJ for a datapath of ``word_bits`` and the given memory sizes.

    The accumulator is taken as ``2 * word_bits + 8`` bits wide (products plus guard bits). The
    PE-to-PE hop is not in Horowitz's table; it is set to twice the RF access, the ratio Eyeriss
    measured.
    """
    acc_bits = 2 * word_bits + 8
    mac = horowitz_mult_pj(word_bits, fp) + horowitz_add_pj(acc_bits if not fp else word_bits, fp)
    rf = horowitz_sram_pj(rf_kb, word_bits) if rf_kb > 0 else horowitz_sram_pj(0.0625, word_bits)
    return EnergyTable(
        unit="pJ",
        word_bits=word_bits,
        mac=mac,
        rf=rf,
        array=2.0 * rf,
        buffer=horowitz_sram_pj(buffer_kb, word_bits),
        dram=HOROWITZ_DRAM_64B_PJ * word_bits / 64.0,
    )


def mac_energy(table: EnergyTable, weight_bits: int, act_bits: int) -> float:
    """One MAC at the given operand widths, scaled from the table's ``word_bits`` MAC.

    A ``w x a`` array multiplier has ``w * a`` partial-product cells, so the energy scales as
    ``(w * a) / word_bits^2``; this is what makes energy monotone in bit-width.
    """
    return table.mac * (weight_bits * act_bits) / float(table.word_bits**2)


def multiplier_area_um2(weight_bits: int, act_bits: int, fp: bool = False) -> float:
    """Area of one multiplier in um^2 (Horowitz 45 nm); integer area ~ bits^1.82 (8 to 32 b)."""
    if fp:
        bits = max(weight_bits, act_bits)
        return HOROWITZ_FP_AREA_UM2[16 if bits <= 16 else 32][0]
    bits = math.sqrt(weight_bits * act_bits)
    return HOROWITZ_INT_MULT_AREA_UM2[8] * (bits / 8.0) ** _MULT_AREA_EXPONENT


def adder_area_um2(bits: int, fp: bool = False) -> float:
    """Area of one adder in um^2 (Horowitz 45 nm): 36 um^2 at 8 b, linear in width."""
    if fp:
        return HOROWITZ_FP_AREA_UM2[16 if bits <= 16 else 32][1]
    return HOROWITZ_INT_ADD_AREA_UM2[8] * bits / 8.0
