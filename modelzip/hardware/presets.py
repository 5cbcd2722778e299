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
``stripes``    bit-serial activations (Judd et al., MICRO 2016) on a 16x16 OS array, 16-bit.
``loom``       bit-serial weights and activations (Sharify et al., DAC 2018), 16x16 OS array.
``bitfusion``  2-bit bricks fused into 8-bit units, 16-bit in 4 steps (Sharma et al., ISCA 2018),
               16x16 OS array.
``xnor``       binary XNOR-popcount PEs, 32x32 OS array.
``cambricon-x`` weight-sparse engine: zero weights skipped with 4-bit step indices, 16x16 array,
               16-bit (Zhang et al., MICRO 2016); output stationary, so each PE streams its
               window of non-zero weights, as Cambricon-X's PEs do.
``eyeriss-sparse`` the Eyeriss preset with zero-activation gating and RLC-compressed DRAM traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from modelzip.core.errors import unknown_name
from modelzip.hardware.spec import AcceleratorSpec, SparseSupport


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
        dram_bandwidth=0.0,
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
        energy_model="horowitz",
    )


def _small_os(name: str, pe: str, **extra: object) -> Callable[[], AcceleratorSpec]:
    def build() -> AcceleratorSpec:
        fields: dict[str, object] = dict(
            name=name, rows=16, cols=16, dataflow="os", word_bits=16, pe=pe
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
        _small_os("stripes", "stripes", energy_model="horowitz"),
        "bit-serial activations on a 16x16 array (Judd et al. 2016)",
    ),
    "loom": _Preset(
        _small_os("loom", "loom", energy_model="horowitz"),
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
