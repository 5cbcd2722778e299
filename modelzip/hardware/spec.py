"""Accelerator specs: frozen, self-checking dataclasses that round-trip through YAML.

An :class:`AcceleratorSpec` describes a PE array (a systolic array, or an Eyeriss-like spatial
array whose PEs have register files), its three on-chip SRAM buffers (ifmap, filter, ofmap, as in
SCALE-Sim), DRAM bandwidth, the processing element (bit-parallel, XNOR, bit-serial, Bit Fusion),
its sparsity support and the energy table used to cost accesses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml

from modelzip.core.atomic import write_text
from modelzip.core.errors import ConfigError
from modelzip.core.frozen import ConfigBase, check_range
from modelzip.hardware.energy import EnergyTable, eyeriss_table, horowitz_table

Dataflow = Literal["os", "ws", "is", "rs"]
ArrayKind = Literal["systolic", "spatial"]
PEKind = Literal["bit_parallel", "xnor", "stripes", "loom", "bitfusion"]
EnergyModel = Literal["eyeriss", "horowitz", "custom"]


@dataclasses.dataclass(frozen=True)
class SparseSupport(ConfigBase):
    """What the PEs do with zeros.

    ``weight_skip``: zero weights are not stored or multiplied (Cambricon-X / EIE); each kept
    weight carries an ``index_bits`` index. ``act_skip``: ``"gate"`` turns the PE off for a zero
    activation (energy only, Eyeriss), ``"skip"`` also saves its cycle (Cnvlutin).
    ``act_compression``: activations move to and from DRAM run-length coded (Eyeriss RLC:
    ``rlc_run_bits`` of run per non-zero). ``output_speculation``: outputs predicted negative
    before the ReLU stop early (SnaPEA), at a fraction given per call. ``lane_group``: PEs that
    wait for each other, which sets the load imbalance of unstructured sparsity.
    ``output_prediction``: a decoupled predict-then-execute engine (the seed's third kind of
    output-sparsity accelerator): a low-precision predictor pass of ``predictor_bits`` runs
    first, then only the outputs it did not mark negative are computed at full precision; fed by
    a before-calculation predictor's measured skip fraction (``Workload.predicted_skip``) and
    its MACs (``Workload.predictor_cost``), or by the measured output sparsity when no predictor
    was attached.
    """

    weight_skip: bool = False
    act_skip: Literal["none", "gate", "skip"] = "none"
    act_compression: bool = False
    output_speculation: bool = False
    output_prediction: bool = False
    predictor_bits: int = 4
    index_bits: int = 4
    rlc_run_bits: int = 5
    lane_group: int = 16

    def validate(self) -> None:
        check_range(self, "index_bits", 0, 32)
        check_range(self, "rlc_run_bits", 1, 16)
        check_range(self, "lane_group", 1)
        check_range(self, "predictor_bits", 1, 16)
        if self.output_speculation and self.output_prediction:
            raise ConfigError(
                "SparseSupport.output_speculation=True and output_prediction=True: choose one "
                "output-sparsity engine (in-place SnaPEA speculation or predict-then-execute)"
            )

    @property
    def any(self) -> bool:
        """True when the engine has any sparsity support (and so pays its overheads)."""
        return (
            self.weight_skip
            or self.act_skip != "none"
            or self.act_compression
            or self.output_speculation
            or self.output_prediction
        )


@dataclasses.dataclass(frozen=True)
class AcceleratorSpec(ConfigBase):
    """One accelerator: array, buffers, bandwidth, processing element, sparsity and energy table.

    Buffers are in kB (1024 bytes) as in SCALE-Sim's ``.cfg``; like SCALE-Sim each is double
    buffered, so ``buffer_active_fraction`` of it holds the working tile. ``dram_bandwidth`` is in
    bytes per cycle; ``0`` means unlimited (no stall cycles). ``accumulate_in_buffer``: partial sums
    of ws / is folds are added up in the ofmap buffer (spilling only when a block does not fit);
    ``False`` is SCALE-Sim's model, where every row fold writes its outputs to DRAM.
    ``word_bits`` is the width the datapath and the energy table are built for; a ``bit_parallel``
    PE takes one cycle per MAC at any narrower width, bit-serial and Bit Fusion PEs gain from it.
    ``tt_engine``: the array runs the stages of a tensor-train / hierarchical-Tucker layer back to
    back with the intermediates in working SRAM (TIE, Deng et al. ISCA 2019; :mod:`.tt_engine`);
    without it each stage is an independent product with a DRAM round trip between stages.
    ``pipelined_folds``: the array's fill and drain are paid once per layer, not once per fold, as
    in tiles that broadcast their operands instead of skewing them through a systolic array
    (DaDianNao and the bit-serial designs built on it, Stripes and Loom); ``False`` is
    SCALE-Sim's systolic model, where every fold pays ``rows + cols - 2`` cycles or more.
    """

    name: str = "custom"
    array: ArrayKind = "systolic"
    rows: int = 32
    cols: int = 32
    dataflow: Dataflow = "os"
    word_bits: int = 16
    rf_bytes: int = 0
    ifmap_sram_kb: float = 64.0
    filter_sram_kb: float = 64.0
    ofmap_sram_kb: float = 64.0
    buffer_active_fraction: float = 0.5
    accumulate_in_buffer: bool = True
    dram_bandwidth: float = 0.0
    clock_mhz: float = 200.0
    pe: PEKind = "bit_parallel"
    bitfusion_brick_bits: int = 2
    fp: bool = False
    sparse: SparseSupport = dataclasses.field(default_factory=SparseSupport)
    tt_engine: bool = False
    pipelined_folds: bool = False
    energy_model: EnergyModel = "eyeriss"
    custom_energy: EnergyTable | None = None

    def validate(self) -> None:
        check_range(self, "rows", 1, 4096)
        check_range(self, "cols", 1, 4096)
        check_range(self, "word_bits", 1, 64)
        check_range(self, "rf_bytes", 0)
        for name in ("ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb", "clock_mhz"):
            check_range(self, name, 0.0, low_open=True)
        check_range(self, "buffer_active_fraction", 0.0, 1.0, low_open=True)
        check_range(self, "dram_bandwidth", 0.0)
        check_range(self, "bitfusion_brick_bits", 1, 8)
        if self.dataflow == "rs" and self.array != "spatial":
            raise ConfigError(
                f"AcceleratorSpec.dataflow='rs' needs array='spatial' (PEs with register files); "
                f"got array={self.array!r}; allowed dataflows for a systolic array: os, ws, is"
            )
        if self.energy_model == "custom" and self.custom_energy is None:
            raise ConfigError("AcceleratorSpec.energy_model='custom' needs custom_energy (a table)")
        word = self.word_bits / 8.0
        # The smallest tile each buffer must hold: one column of operands, one array of weights
        # (what a weight-stationary fold keeps) and one row of outputs.
        tiles = {
            "ifmap_sram_kb": self.rows * word,
            "filter_sram_kb": self.rows * self.cols * word,
            "ofmap_sram_kb": self.cols * word,
        }
        for name, need in tiles.items():
            have = getattr(self, name) * 1024 * self.buffer_active_fraction
            if have < need:
                raise ConfigError(
                    f"AcceleratorSpec.{name}={getattr(self, name)!r} is smaller than one tile: its "
                    f"active part ({have:g} B) must hold {need:g} B for a {self.rows}x{self.cols} "
                    f"array of {self.word_bits}-bit words; allowed >= "
                    f"{need / 1024 / self.buffer_active_fraction:g} kB"
                )
        if self.array == "spatial" and self.rf_bytes < 3 * word:
            raise ConfigError(
                f"AcceleratorSpec.rf_bytes={self.rf_bytes!r} cannot hold one weight, activation "
                f"and partial sum; allowed >= {3 * word:g} for a spatial array"
            )

    @property
    def pes(self) -> int:
        """Number of processing elements."""
        return self.rows * self.cols

    @property
    def buffer_kb(self) -> float:
        """Total on-chip SRAM in kB."""
        return self.ifmap_sram_kb + self.filter_sram_kb + self.ofmap_sram_kb

    def energy_table(self) -> EnergyTable:
        """The per-access energy table this spec selects (see :mod:`modelzip.hardware.energy`)."""
        if self.energy_model == "custom":
            assert self.custom_energy is not None
            return self.custom_energy
        if self.energy_model == "horowitz":
            rf_kb = self.rf_bytes / 1024.0
            return horowitz_table(self.word_bits, rf_kb, self.buffer_kb / 3.0, self.fp)
        return eyeriss_table()

    def save(self, path: str | Path) -> None:
        """Write this spec as YAML (atomically)."""
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> AcceleratorSpec:
        """Read a spec from YAML written by :meth:`save` (or by hand)."""
        from modelzip.core.config import load_yaml

        data: Any = load_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: an accelerator spec must be a mapping of fields")
        return cls.from_dict(data)
