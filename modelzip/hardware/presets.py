"""Named accelerator presets: ``get_accelerator(name)``, ``list_accelerators()`` and
``accelerator_description(name)`` (the one line ``modelzip list`` shows).

``tpu``        weight-stationary 128x128 systolic array, 8-bit, the buffers of SCALE-Sim's
               ``google.cfg`` (6 MB ifmap, 6 MB filter, 2 MB ofmap), Horowitz 45 nm energies.
``eyeriss``    row-stationary 12x14 spatial array, 16-bit, 0.5 kB RF per PE, 108 kB global buffer
               (36/36/36 kB as in SCALE-Sim's ``eyeriss.cfg``; row stationary uses them as one
               buffer, not double buffered), Eyeriss normalized energies,
               Chen et al. ISSCC 2016.
``os``         generic output-stationary 32x32 systolic array with SCALE-Sim's ``scale.cfg`` buffers
               (64 kB each), Horowitz energies.
``stripes``    bit-serial activations (Judd et al., MICRO 2016) on a 16x16 OS array, 16-bit; its
               tiles broadcast activations (DaDianNao's organization), so folds are pipelined
               (``pipelined_folds``: the fill and drain are paid once per layer).
``loom``       bit-serial weights and activations (Sharify et al., DAC 2018), 16x16 OS array,
               pipelined folds as Stripes.
``bitfusion``  2-bit bricks fused into 8-bit units, 16-bit in 4 steps (Sharma et al., ISCA 2018),
               16x16 OS array; Bit Fusion's array is systolic, so each fold pays its fill and
               drain, which 2-bit layers' 16x shorter streams no longer hide.
``xnor``       binary XNOR-popcount PEs, 32x32 OS array.
``cambricon-x`` weight-sparse engine: zero weights skipped with 4-bit step indices, 16x16 array,
               16-bit (Zhang et al., MICRO 2016); output stationary, so each PE streams its
               window of non-zero weights, as Cambricon-X's PEs do.
``eyeriss-sparse`` the Eyeriss preset with zero-activation gating and RLC-compressed DRAM traffic.
``cnvlutin``   zero activations skipped (their cycles too), 16x16 OS array, 16-bit (Albericio et
               al., ISCA 2016).
``snapea``     in-place output speculation: a ReLU output's MACs stop once its sign is known to be
               negative, 16x16 OS array, 16-bit (Akhlaghi et al., ISCA 2018).
``predict-execute`` decoupled predict-then-execute: a 4-bit predictor pass, then only the outputs
               predicted positive at 16 bits (SeerNet, Cao et al. CVPR 2019), 16x16 OS array.
``tie``        a TT engine (TIE, Deng et al. ISCA 2019): the stages of a tensor-train /
               hierarchical-Tucker layer run back to back with intermediates in working SRAM;
               16x16 OS array of 16-bit MACs (TIE's 16 PEs of 16 multipliers), 64 kB buffers.
``sparse-both`` zero weights and zero activations both skipped (an SCNN-like combined engine,
               Parashar et al., ISCA 2017), 16x16 OS array, 16-bit.

DRAM bandwidth (bytes per core cycle), from the published interfaces where there is one:
``tpu`` 30 GB/s DDR3 at 700 MHz (Jouppi et al.: 42.9 B/cycle); ``eyeriss`` a 64-bit link at
60 MHz for a 200 MHz core (Chen et al. ISSCC 2016: 2.4 B/cycle); ``os`` SCALE-Sim's ``scale.cfg``
(``Bandwidth : 10`` words of 2 bytes: 20 B/cycle). The 16x16 and 32x32 engines name no DRAM
interface in their papers (Stripes and Cambricon-X keep weights in on-chip eDRAM); they get
``ASSUMED_BANDWIDTH``: one 32-bit LPDDR4-3200 channel (12.8 GB/s) at their 200 MHz clock.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from modelzip.core.errors import unknown_name
from modelzip.hardware.spec import AcceleratorSpec, SparseSupport

# Bytes per cycle: 30 GB/s (TPU v1's DDR3) at 700 MHz; Eyeriss's 64-bit link at 60 MHz over its
# 200 MHz core; scale.cfg's 10 words/cycle of 16 bits; 12.8 GB/s (LPDDR4-3200 x32) at 200 MHz.
TPU_BANDWIDTH = 30e9 / 700e6
EYERISS_BANDWIDTH = 8 * 60e6 / 200e6
SCALE_CFG_BANDWIDTH = 10 * 2.0
ASSUMED_BANDWIDTH = 12.8e9 / 200e6


def _tpu() -> AcceleratorSpec:
    return AcceleratorSpec(
        name="tpu",
        array="systolic",
        rows=128,
        cols=128,
        dataflow="ws",
        word_bits=8,
        ifmap_sram_kb=6144,
        filter_sram_kb=6144,
        ofmap_sram_kb=2048,
        clock_mhz=700,
        dram_bandwidth=TPU_BANDWIDTH,
        energy_model="horowitz",
    )


def _eyeriss() -> AcceleratorSpec:
    return AcceleratorSpec(
        name="eyeriss",
        array="spatial",
        rows=12,
        cols=14,
        dataflow="rs",
        word_bits=16,
        rf_bytes=512,
        ifmap_sram_kb=36,
        filter_sram_kb=36,
        ofmap_sram_kb=36,
        buffer_active_fraction=1.0,
        clock_mhz=200,
        dram_bandwidth=EYERISS_BANDWIDTH,
        energy_model="eyeriss",
    )


def _os() -> AcceleratorSpec:
    return AcceleratorSpec(
        name="os",
        rows=32,
        cols=32,
        dataflow="os",
        word_bits=16,
        ifmap_sram_kb=64,
        filter_sram_kb=64,
        ofmap_sram_kb=64,
        dram_bandwidth=SCALE_CFG_BANDWIDTH,
        energy_model="horowitz",
    )


def _small_os(name: str, pe: str, **extra: object) -> Callable[[], AcceleratorSpec]:
    def build() -> AcceleratorSpec:
        fields: dict[str, object] = dict(
            name=name,
            rows=16,
            cols=16,
            dataflow="os",
            word_bits=16,
            pe=pe,
            dram_bandwidth=ASSUMED_BANDWIDTH,
        )
        fields.update(extra)
        return AcceleratorSpec(**fields)  # type: ignore[arg-type]

    return build


class _Preset(NamedTuple):
    build: Callable[[], AcceleratorSpec]
    description: str  # one line, shown by ``modelzip list``


_PRESETS: dict[str, _Preset] = {
    "tpu": _Preset(_tpu, "128x128 weight-stationary systolic array, 8-bit (Jouppi et al. 2017)"),
    "eyeriss": _Preset(
        _eyeriss, "12x14 row-stationary array, 16-bit, normalized energies (Chen et al. 2016)"
    ),
    "os": _Preset(_os, "generic 32x32 output-stationary systolic array, SCALE-Sim's scale.cfg"),
    "stripes": _Preset(
        _small_os("stripes", "stripes", energy_model="horowitz", pipelined_folds=True),
        "bit-serial activations on a 16x16 array (Judd et al. 2016)",
    ),
    "loom": _Preset(
        _small_os("loom", "loom", energy_model="horowitz", pipelined_folds=True),
        "bit-serial weights and activations on a 16x16 array (Sharify et al. 2018)",
    ),
    "bitfusion": _Preset(
        _small_os("bitfusion", "bitfusion", word_bits=8, energy_model="horowitz"),
        "2-bit bricks fused into 8-bit units, 16x16 array (Sharma et al. 2018)",
    ),
    "xnor": _Preset(
        _small_os("xnor", "xnor", rows=32, cols=32, energy_model="horowitz"),
        "binary XNOR-popcount PEs, 32x32 output-stationary array",
    ),
    "cambricon-x": _Preset(
        _small_os(
            "cambricon-x",
            "bit_parallel",
            dataflow="os",
            energy_model="horowitz",
            sparse=SparseSupport(weight_skip=True, index_bits=4),
        ),
        "zero weights skipped with 4-bit step indices, 16x16 array (Zhang et al. 2016)",
    ),
    "eyeriss-sparse": _Preset(
        lambda: _eyeriss().replace(
            name="eyeriss-sparse", sparse=SparseSupport(act_skip="gate", act_compression=True)
        ),
        "Eyeriss with zero-activation gating and compressed DRAM traffic",
    ),
    "cnvlutin": _Preset(
        _small_os(
            "cnvlutin",
            "bit_parallel",
            energy_model="horowitz",
            sparse=SparseSupport(act_skip="skip"),
        ),
        "zero activations skipped, cycles included, 16x16 array (Albericio et al. 2016)",
    ),
    "snapea": _Preset(
        _small_os(
            "snapea",
            "bit_parallel",
            energy_model="horowitz",
            sparse=SparseSupport(output_speculation=True),
        ),
        "in-place speculation: negative ReLU outputs stop early (Akhlaghi et al. 2018)",
    ),
    "predict-execute": _Preset(
        _small_os(
            "predict-execute",
            "bit_parallel",
            energy_model="horowitz",
            sparse=SparseSupport(output_prediction=True, predictor_bits=4),
        ),
        "4-bit predictor pass, then only outputs predicted positive (Cao et al. 2019)",
    ),
    "tie": _Preset(
        _small_os("tie", "bit_parallel", energy_model="horowitz", tt_engine=True),
        "TT engine: TT/HT layer stages back to back, intermediates on chip (Deng et al. 2019)",
    ),
    "sparse-both": _Preset(
        _small_os(
            "sparse-both",
            "bit_parallel",
            energy_model="horowitz",
            sparse=SparseSupport(weight_skip=True, act_skip="skip"),
        ),
        "zero weights and zero activations both skipped, 16x16 array (SCNN-like, 2017)",
    ),
}


def list_accelerators() -> list[str]:
    """Names of the preset accelerators."""
    return sorted(_PRESETS)


def accelerator_description(name: str) -> str:
    """A preset's one-line description (what ``modelzip list`` shows)."""
    if name not in _PRESETS:
        raise unknown_name("accelerator", name, list(_PRESETS))
    return _PRESETS[name].description


def get_accelerator(name: str | AcceleratorSpec) -> AcceleratorSpec:
    """A preset by name, a spec from a ``.yaml`` path, or the spec itself unchanged."""
    if isinstance(name, AcceleratorSpec):
        return name
    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        return AcceleratorSpec.load(name)
    if name not in _PRESETS:
        raise unknown_name("accelerator", name, list(_PRESETS))
    return _PRESETS[name].build()
