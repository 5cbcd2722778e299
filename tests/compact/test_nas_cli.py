"""``modelzip nas``: a tiny search on the 8x8 digits, resumed from its checkpoint."""

import json

from modelzip.cli import main

ARGS = ["--dataset", "digits", "--population", "2", "--cycles", "1", "--train-size", "128",
        "--val-size", "64", "--max-params", "20000", "--quiet"]  # fmt: skip


def test_nas_runs_and_resumes_to_the_same_result(tmp_path, capsys):
    out = tmp_path / "nas"
    assert main(["nas", *ARGS, "--out", str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["evaluations"] == 3
    saved = json.loads((out / "nas.json").read_text())
    assert len(saved["history"]) == 3 and saved["best"] == first["best"]
    # Rerunning with the checkpoint in place trains nothing again and gives the same best.
    checkpoint = (out / "checkpoint.json").read_text()
    assert main(["nas", *ARGS, "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == first
    assert (out / "checkpoint.json").read_text() == checkpoint


def test_nas_rejects_bad_counts(tmp_path, capsys):
    assert main(["nas", *ARGS, "--population", "0", "--out", str(tmp_path)]) == 2
    assert "--population=0 is out of range" in capsys.readouterr().err
