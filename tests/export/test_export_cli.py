"""``modelzip export FILE --format onnx --out model.onnx``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from modelzip.api import compress
from modelzip.cli import main
from modelzip.export import run_onnx
from modelzip.models import create
from modelzip.recipe import Recipe
from modelzip.serialize import save


def _saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    sample = torch.rand(4, 1, 28, 28)
    steps = [{"method": "tucker2"}, {"method": "int8", "select": {"types": ["Linear"]}}]
    small, _ = compress(
        create("lenet5").eval(), Recipe.from_list(steps), sample=sample, measure=False
    )
    return save(small, tmp_path / "small.mzip"), small.eval()


def test_export_command_writes_a_file_onnxruntime_runs(tmp_path: Path, capsys) -> None:
    path, small = _saved(tmp_path)
    out = tmp_path / "small.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(out) and result["file_bytes"] == out.stat().st_size
    assert {"Conv", "MatMulInteger"} <= set(result["op_types"])  # int8 default: dynamic
    assert result["max_abs_error"] < 0.05
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        ref = small(x)
    assert float((run_onnx(out, x) - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_export_command_errors_are_one_line(tmp_path: Path, capsys) -> None:
    path, _ = _saved(tmp_path)
    assert main(["export", str(path), "--out", str(tmp_path / "m.onnx"), "--opset", "9"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --opset=9 is out of range; allowed [13, 25]\n"
    assert main(["export", str(tmp_path / "missing.mzip"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.startswith("error: no such file")
    assert not (tmp_path / "m.onnx").exists()
