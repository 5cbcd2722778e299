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


def test_parallel_random_search_matches_in_process_evaluations(tmp_path, capsys):
    from modelzip.compact.nas import SearchObjective
    from modelzip.compact.nas.parallel import make_space
    from modelzip.data import load_dataset

    out = tmp_path / "par"
    args = ["nas", *ARGS, "--algorithm", "random", "--trials", "3", "--out", str(out), "--json"]
    assert main([*args, "--executor", "local", "--workers", "2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["evaluations"] == 3
    history = json.loads((out / "nas.json").read_text())["history"]
    # Metrics depend only on the architecture: an in-process evaluation gives the same numbers.
    data = load_dataset("digits")
    objective = SearchObjective(max_params=20000, train_size=128, val_size=64)
    space = make_space("block", tuple(data.input_shape), data.num_classes)
    from modelzip.compact.nas import arch_key

    entry = history[0]
    again = objective(space.build(entry["arch"]), data, arch_key(entry["arch"]))
    assert again["accuracy"] == entry["metrics"]["accuracy"]
    # A rerun finds every evaluation in the store and runs none.
    assert main([*args, "--executor", "local", "--workers", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["best"] == first["best"]


def test_parallel_search_needs_random(tmp_path, capsys):
    assert main(["nas", *ARGS, "--executor", "local", "--out", str(tmp_path)]) == 2
    assert "only --algorithm random" in capsys.readouterr().err
