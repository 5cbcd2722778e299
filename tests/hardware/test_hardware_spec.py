"""Accelerator specs: presets, YAML round trip, clear errors for invalid specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelzip.core.errors import ConfigError, UnknownNameError
from modelzip.hardware import AcceleratorSpec, EnergyTable, get_accelerator, list_accelerators
from modelzip.hardware.energy import eyeriss_table, horowitz_mult_pj, horowitz_sram_pj


@pytest.mark.parametrize("name", list_accelerators())
def test_presets_round_trip_through_yaml(name: str, tmp_path: Path) -> None:
    spec = get_accelerator(name)
    path = tmp_path / f"{name}.yaml"
    spec.save(path)
    assert AcceleratorSpec.load(path) == spec
    assert get_accelerator(str(path)) == spec
    assert spec.energy_table().unit in ("pJ", "normalized")


def test_required_presets() -> None:
    tpu, eyeriss, os_ = (get_accelerator(n) for n in ("tpu", "eyeriss", "os"))
    assert (tpu.rows, tpu.cols, tpu.dataflow) == (128, 128, "ws")
    assert (eyeriss.rows, eyeriss.cols, eyeriss.dataflow, eyeriss.array) == (
        12,
        14,
        "rs",
        "spatial",
    )
    assert os_.dataflow == "os"


def test_energy_tables() -> None:
    t = eyeriss_table()
    assert (t.mac, t.rf, t.array, t.buffer, t.dram) == (1.0, 1.0, 2.0, 6.0, 200.0)
    assert horowitz_mult_pj(8) == pytest.approx(0.2)
    assert horowitz_mult_pj(32) == pytest.approx(3.1, rel=0.05)
    assert horowitz_sram_pj(8) == pytest.approx(10.0)
    assert horowitz_sram_pj(32) == pytest.approx(20.0)
    assert horowitz_sram_pj(1024) == pytest.approx(100.0, rel=0.15)
    tpu = get_accelerator("tpu").energy_table()
    assert tpu.unit == "pJ" and tpu.mac < tpu.buffer < tpu.dram


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(UnknownNameError, match="eyeriss"):
        get_accelerator("eyeris")


@pytest.mark.parametrize(
    "change,match",
    [
        ({"rows": 0}, r"rows=0 is out of range; allowed \[1, 4096\]"),
        ({"cols": -3}, r"cols=-3 is out of range"),
        ({"ifmap_sram_kb": 0.0}, r"ifmap_sram_kb=0.0 is out of range; allowed \(0"),
        ({"filter_sram_kb": 1.0}, r"filter_sram_kb=1.0 is smaller than one tile"),
        ({"dataflow": "rs"}, r"needs array='spatial'"),
        ({"dataflow": "xs"}, r"dataflow='xs' is not allowed"),
        ({"energy_model": "custom"}, r"needs custom_energy"),
        ({"rows": "many"}, r"wrong type"),
        ({"sparse": {"lane_group": 0}}, r"lane_group=0 is out of range"),
    ],
)
def test_invalid_specs_fail_with_field_value_and_range(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AcceleratorSpec.from_dict({**AcceleratorSpec().to_dict(), **change})


def test_negative_energy_refused() -> None:
    with pytest.raises(ConfigError, match=r"EnergyTable.dram=-1.0 is out of range; allowed \[0"):
        EnergyTable(dram=-1.0)
    with pytest.raises(ConfigError, match="no field 'dram_pj'"):
        EnergyTable.from_dict({"dram_pj": 3})


def test_custom_energy_round_trip(tmp_path: Path) -> None:
    spec = AcceleratorSpec(energy_model="custom", custom_energy=EnergyTable(unit="pJ", mac=2.0))
    spec.save(tmp_path / "s.yaml")
    loaded = AcceleratorSpec.load(tmp_path / "s.yaml")
    assert loaded.energy_table().mac == 2.0


def test_bad_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        AcceleratorSpec.load(tmp_path / "x.yaml")
