"""The demo says why a deployed method runs slower than the dense baseline (issue #20)."""

from __future__ import annotations

from modelzip.demo import _why_slower
from modelzip.deploy import LayerMaterialization, MaterializeReport


def test_a_slower_method_gets_a_reason_naming_its_layers() -> None:
    report = MaterializeReport(
        [
            LayerMaterialization(
                "conv2", "XnorConv2d", "BinaryConv2d", "xnor", "", speedup=1.7, form="exact:xnor"
            ),
            LayerMaterialization(
                "fc1",
                "MaskedLinear",
                "MaskedLinear",
                "unchanged",
                "measured: CSR 0.80× the speed of MaskedLinear: kept",
            ),
            LayerMaterialization("fc9", "Linear", "Linear", "unchanged", "not changed"),
        ]
    )
    why = _why_slower(report, {"conv2", "fc1"})
    assert "conv2 xnor 1.70×" in why
    assert "fc1: measured: CSR 0.80×" in why and "fc9" not in why
    assert "no layer changed form" in _why_slower(MaterializeReport([]), set())
