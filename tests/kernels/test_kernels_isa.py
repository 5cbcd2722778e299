"""Run-time detection of VNNI as the int8 engines see it, and int8 products that stay exact where
they could saturate (`make test-fallback` runs these with the fallbacks forced)."""

from __future__ import annotations

import pytest
import torch

from modelzip.kernels import isa
from modelzip.kernels.int8 import int8_matmul, linear_dynamic, prepack_linear

_ENGINE_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                     "FBGEMM_ENABLE_INSTRUCTIONS", "MODELZIP_INT8_REDUCE_RANGE")  # fmt: skip


@pytest.fixture
def vnni_machine(monkeypatch: pytest.MonkeyPatch):
    """An x86 machine with AVX-512 VNNI and no engine variable set; detection re-read."""
    for name in _ENGINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(isa.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(isa.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(isa, "_cpu_has_vnni", lambda: True)
    isa.int8_saturation.cache_clear()
    yield monkeypatch
    isa.int8_saturation.cache_clear()


def test_vnni_is_detected_where_every_engine_has_it(vnni_machine) -> None:
    assert isa.int8_saturation() is None
    assert not isa.reduced_int8_range()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ONEDNN_MAX_CPU_ISA", "AVX2", "ONEDNN_MAX_CPU_ISA=AVX2"),
        ("ONEDNN_MAX_CPU_ISA", "avx512_core", "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
        ("DNNL_MAX_CPU_ISA", "AVX2", "DNNL_MAX_CPU_ISA=AVX2"),
        ("FBGEMM_ENABLE_INSTRUCTIONS", "AVX512", "FBGEMM_ENABLE_INSTRUCTIONS=AVX512"),
        ("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS=AVX2"),
    ],
)
def test_engine_caps_below_vnni_count_as_no_vnni(vnni_machine, variable, value, says) -> None:
    vnni_machine.setenv(variable, value)
    assert says in (isa.int8_saturation() or "")
    assert isa.reduced_int8_range()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI"), ("ONEDNN_MAX_CPU_ISA", "AVX2_VNNI"),
     ("ONEDNN_MAX_CPU_ISA", "ALL"), ("FBGEMM_ENABLE_INSTRUCTIONS", "AVX512_E1")],
)  # fmt: skip
def test_engine_caps_with_vnni_keep_8_bits(vnni_machine, variable, value) -> None:
    vnni_machine.setenv(variable, value)
    assert isa.int8_saturation() is None


def test_aten_capability_cpu_and_architecture(vnni_machine) -> None:
    vnni_machine.setattr(isa.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    vnni_machine.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert "AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)" in (isa.int8_saturation() or "")
    isa.int8_saturation.cache_clear()
    vnni_machine.setattr(isa.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    vnni_machine.setattr(isa, "_cpu_has_vnni", lambda: False)  # e.g. Skylake: AVX-512, no VNNI
    assert isa.int8_saturation() == "the CPU lacks AVX-512 VNNI"
    isa.int8_saturation.cache_clear()
    vnni_machine.setattr(isa.platform, "machine", lambda: "aarch64")
    assert isa.int8_saturation() is None  # ARM's int8 kernels do not add pairs into int16


def test_reduced_range_can_be_asked_for(vnni_machine) -> None:
    vnni_machine.setenv("MODELZIP_INT8_REDUCE_RANGE", "1")
    assert isa.int8_saturation() is None and isa.reduced_int8_range()


def _worst_operands(m: int, k: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Operands whose products are all at the int8 extremes (every sign), alternating signs
    along ``k``, and random ones."""
    g = torch.Generator().manual_seed(m * k + n)
    pairs = [(torch.full((m, k), av, dtype=torch.int8), torch.full((k, n), bv, dtype=torch.int8))
             for av in (127, -128) for bv in (127, -128)]  # fmt: skip
    alternating = torch.full((m, k), 127, dtype=torch.int8)
    alternating[:, 1::2] = -128
    pairs.append((alternating, torch.full((k, n), 127, dtype=torch.int8)))
    pairs.append((torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g),
                  torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=g)))  # fmt: skip
    return pairs


@pytest.mark.parametrize("saturating", [False, True], ids=["this-machine", "forced-fallback"])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 64, 8), (8, 64, 1), (17, 33, 40), (4, 1500, 3)])
def test_int8_matmul_is_exact_at_the_extremes(m, k, n, saturating, monkeypatch) -> None:
    if saturating:  # the float path taken where oneDNN's product would saturate
        monkeypatch.setattr(isa, "int8_saturation", lambda: "forced by the test")
    for a, b in _worst_operands(m, k, n):
        assert torch.equal(int8_matmul(a, b), (a.double() @ b.double()).int())


def test_dynamic_linear_is_correct_at_the_extremes() -> None:
    """The dynamic linear quantizes activations to 7 bits (reduce_range): its products cannot
    saturate even without VNNI."""
    codes = torch.full((8, 64), 127, dtype=torch.int8)
    codes[1::2] = -127
    scale = torch.full((8,), 0.01)
    x = torch.full((3, 64), 2.0)
    y = linear_dynamic(x, prepack_linear(codes, scale, None))
    ref = x.double() @ (codes.double() * scale.double()[:, None]).T
    assert float((y - ref).abs().max()) < 0.01 * float(ref.abs().max())
