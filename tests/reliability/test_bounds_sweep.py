"""Bounds on what a sweep file or a recipe may ask for, and sweep workers that die with the parent.

Each case is a small input that used to cost minutes, gigabytes or a traceback: a 1 KB grid of
10^9 recipes, an infinite range bound, a seed torch cannot take, a base model that is the CLI
itself, a recipe of 23k steps, and pool workers left running after ``kill -9`` of the sweep.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import attack_log
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from sweep_doubles import NoExecutor
from weight_strategies import PROFILE

import modelzip.cli
from modelzip.core.errors import ConfigError, ModelzipError
from modelzip.recipe import MAX_RECIPE_STEPS, Recipe
from modelzip.sweep import SweepConfig, run_sweep
from modelzip.sweep import grid as grid_module
from modelzip.sweep.grid import MAX_SEED, MAX_SWEEP_POINTS

REPO = Path(__file__).resolve().parents[2]
TASK_KINDS = REPO / "tests" / "sweep"  # sweep_task_kinds.py, importable by spawned workers
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}

# Nine axes of ten values: 10^9 recipes from a file of a few hundred bytes.
HUGE_GRID = {f"magnitude_prune.select.names{i}": list(range(10)) for i in range(9)}


pytestmark = pytest.mark.attack("Unbounded sweep grids and random spaces")


def _cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "modelzip.cli", *args]
    return subprocess.run(
        command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _one_error_line(stderr: str) -> str:
    assert stderr.startswith("error: "), stderr[-2000:]
    assert stderr.count("\n") == 1, stderr[-2000:]  # one line, no traceback
    return stderr


# --- 1. the size of a sweep is counted, not expanded ---------------------------------------------


def test_huge_grid_is_refused_before_anything_is_expanded(monkeypatch) -> None:
    def expand(*args: object) -> None:
        raise AssertionError("the grid was expanded before its size was checked")

    monkeypatch.setattr(grid_module, "_product", expand)
    with pytest.raises(ConfigError) as info:
        SweepConfig.from_dict({"grid": HUGE_GRID})
    message = str(info.value)
    assert "1,000,000,000" in message and f"max_points={MAX_SWEEP_POINTS:,}" in message
    assert "10 × 10 × 10" in message and "--max-points" in message


def test_point_count_is_the_product_plus_the_random_draws() -> None:
    data = {
        "grid": {"magnitude_prune.sparsity": [0.5, 0.6, 0.7], "int8.per_channel": [True, False]},
        "random": {"n": 4, "seed": 0, "space": {"magnitude_prune.sparsity": [0.8, 0.9]}},
    }
    config = SweepConfig.from_dict(data)
    assert config.point_count() == 3 * 2 + 4
    assert len(config.assignments()) == config.point_count()
    with pytest.raises(ConfigError, match=r"10 points .* above max_points=9"):
        SweepConfig.from_dict(data, max_points=9)
    assert SweepConfig.from_dict(data, max_points=10).point_count() == 10
    assert SweepConfig.from_dict({}).point_count() == 1  # the template alone


def test_random_draws_count_against_the_limit() -> None:
    data = {
        "grid": {"magnitude_prune.sparsity": [0.5, 0.6]},
        "random": {"n": 100_000, "space": {"magnitude_prune.sparsity": [0.8, 0.9]}},
    }
    with pytest.raises(ConfigError, match=r"100,002 points .*random\.n=100,000"):
        SweepConfig.from_dict(data)


def test_limit_comes_from_the_caller_not_from_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"max_points.*cannot be set in a sweep file"):
        SweepConfig.from_dict({"grid": HUGE_GRID, "max_points": 10**10})
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"grid": {"magnitude_prune.sparsity": [0.5, 0.6, 0.7]}}))
    with pytest.raises(ConfigError, match=r"grid\.yaml: .*3 points"):
        SweepConfig.load(path, max_points=2)
    config = SweepConfig.load(path, max_points=3)
    assert len(config.points()) == 3
    assert "max_points" not in config.to_dict()  # the file written back carries no limit
    with pytest.raises(ConfigError, match=r"SweepConfig.max_points=0 is out of range"):
        SweepConfig.load(path, max_points=0)


def test_cli_refuses_a_huge_grid_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"grid": HUGE_GRID}))
    assert path.stat().st_size < 1024
    done = _cli(["sweep", str(path), "--out", str(tmp_path / "out")], tmp_path, timeout=60)
    assert done.returncode == 2
    assert "1,000,000,000 points" in _one_error_line(done.stderr)
    assert not (tmp_path / "out").exists()

    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"grid": {"magnitude_prune.sparsity": [0.5, 0.6, 0.7]}}))
    done = _cli(["sweep", str(small), "--out", "o", "--max-points", "2"], tmp_path, timeout=60)
    assert done.returncode == 2 and "above max_points=2" in _one_error_line(done.stderr)


def test_max_points_help_states_the_default() -> None:
    # command.py cannot import the constant (grid.py loads torch); its help must not drift from it.
    parser = modelzip.cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    help_text = sub.choices["sweep"].format_help()
    assert f"MAX_SWEEP_POINTS, {MAX_SWEEP_POINTS:,}" in " ".join(help_text.split())


# --- 2. random spaces and seeds: finite, in range, or refused ----------------------------------


@pytest.mark.parametrize(
    ("dist", "message"),
    [
        ({"low": 0.1, "high": float("inf")}, "high=inf must be a finite number"),
        ({"low": 1, "high": float("inf"), "integer": True}, "high=inf must be a finite number"),
        ({"low": 1, "high": float("inf"), "log": True}, "high=inf must be a finite number"),
        ({"low": -float("inf"), "high": 0.5}, "low=-inf must be a finite number"),
        ({"low": 1, "high": 10**400}, "must be a finite number"),
        ({"low": -1.7e308, "high": 1.7e308}, "high - low overflows"),
        ({"low": 0.2, "high": 0.8, "integer": True}, "holds no integer"),
        ({"low": 1, "high": 4, "integer": "yes"}, "integer='yes' must be true or false"),
    ],
)
def test_random_ranges_must_be_finite_and_usable(dist: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        SweepConfig.from_dict({"random": {"n": 3, "space": {"svd.rank": dist}}})
    assert "random.space.svd.rank" in str(info.value)


@pytest.mark.parametrize("where", ["base", "random"])
@pytest.mark.parametrize("seed", [10**23, 2**32, -1])
def test_seeds_are_limited_to_what_torch_and_numpy_take(where: str, seed: int) -> None:
    data: dict = {"grid": {"int8.per_channel": [True]}}
    if where == "base":
        data["base"] = {"seed": seed}
    else:
        data["random"] = {"n": 1, "seed": seed, "space": {"int8.per_channel": [True]}}
    owner = "SweepBase" if where == "base" else "RandomSpace"
    expected = f"{owner}.seed={seed} is out of range; allowed [0, {MAX_SEED}]"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        SweepConfig.from_dict(data)
    data[where]["seed"] = MAX_SEED
    SweepConfig.from_dict(data)  # the largest allowed seed is accepted


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"random": {"n": 2, "space": {"svd.rank": {"low": 1, "high": float("inf"),
                                                       "integer": True}}}},
            "high=inf must be a finite number",
        ),
        ({"base": {"seed": 10**23}}, f"SweepBase.seed={10**23} is out of range"),
    ],
)  # fmt: skip
def test_cli_prints_one_line_for_bad_spaces_and_seeds(
    tmp_path: Path, capsys, extra: dict, message: str
) -> None:
    # Before these checks, the first raised OverflowError and the second torch's ValueError.
    base = {"model": "lenet300", "dataset": "digits", "pretrained": False, "eval_size": 50}
    data = {"grid": {"int8.per_channel": [True]}, **extra}
    data["base"] = {**base, **extra.get("base", {})}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    code = modelzip.cli.main(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert message in _one_error_line(capsys.readouterr().err)


# --- 3. the base model: trust from the command line only, never from the file -------------------


@pytest.mark.attack("A file names a function to call (gadgets)")
def test_trust_cannot_come_from_the_sweep_file() -> None:
    with pytest.raises(ConfigError, match=r"trust_remote_code.*--trust-remote-code"):
        SweepConfig.from_dict({"base": {"model": "x.y:build", "trust_remote_code": True}})


@pytest.mark.attack("A file names a function to call (gadgets)")
def test_the_cli_entry_point_is_not_a_model(tmp_path: Path, monkeypatch) -> None:
    real = modelzip.cli.main
    calls = []

    @functools.wraps(real)
    def spy(*args: object, **kwargs: object) -> int:
        calls.append((args, kwargs))
        raise AssertionError("modelzip.cli:main was called as a model factory")

    monkeypatch.setattr(modelzip.cli, "main", spy)
    config = SweepConfig.from_dict(
        {"base": {"model": "modelzip.cli:main", "dataset": "digits", "pretrained": False}}
    )
    with pytest.raises(ModelzipError, match=re.escape("modelzip.cli:main")):
        run_sweep(config, tmp_path / "out", executor=NoExecutor(), progress=False)
    assert calls == []


@pytest.mark.attack("A file names a function to call (gadgets)")
def test_cli_sweep_of_the_cli_itself_ends_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    base = {"model": "modelzip.cli:main", "dataset": "digits", "pretrained": False}
    path.write_text(yaml.safe_dump({"base": base, "grid": {"int8.per_channel": [True]}}))
    done = _cli(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "modelzip.cli:main" in _one_error_line(done.stderr)


OUTSIDE_MODULE = """
from torch import nn

def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
"""


def test_trust_from_the_command_line_reaches_the_workers(tmp_path: Path, monkeypatch) -> None:
    from modelzip.sweep import LocalExecutor

    name = "modelzip_sweep_outside_factory"
    (tmp_path / f"{name}.py").write_text(OUTSIDE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned workers get the same sys.path
    monkeypatch.delitem(sys.modules, name, raising=False)
    config = SweepConfig.from_dict(
        {
            "base": {"model": f"{name}:build", "dataset": "digits", "eval_size": 50},
            "grid": {"quantize_weights.bits": [4]},
        }
    )
    with pytest.raises(ModelzipError, match=name):
        run_sweep(config, tmp_path / "refused", executor=NoExecutor(), progress=False)
    assert name not in sys.modules  # refused before importing it
    pool = LocalExecutor(1)
    try:
        summary = run_sweep(
            config, tmp_path / "trusted", executor=pool, progress=False, trust_remote_code=True
        )
    finally:
        pool.close()
    assert (summary.tasks, summary.done, summary.failed) == (2, 2, 0), summary.failures


# --- 4. pool workers die with the parent ---------------------------------------------------------

POOL_SCRIPT = """
import sys, time
from modelzip.sweep.executors import LocalExecutor

pool = LocalExecutor(2)
for i in range(2):
    pool.submit(i, "sweep_task_kinds:hang", {"marker": sys.argv[1] + str(i)})
print("submitted", flush=True)
time.sleep(600)
"""


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of ``pid`` from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), fields[19]


def _descendants(root: int) -> dict[int, str]:
    """Every process below ``root``: pid -> start time (to tell a reused pid apart)."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            parents.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, start in parents.get(todo.pop(), []):
            out[pid] = start
            todo.append(pid)
    return out


def _alive(pid: int, start: str) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == start and stat[0] != "Z"  # a zombie has exited


@pytest.mark.attack("Parent killed while pool workers start")
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("when", ["starting", "running"])
def test_pool_workers_exit_when_the_parent_is_killed(tmp_path: Path, when: str) -> None:
    marker = tmp_path / "started"
    paths = [str(TASK_KINDS), *filter(None, [ENV.get("PYTHONPATH")])]
    env = {**ENV, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.Popen(
        [sys.executable, "-c", POOL_SCRIPT, str(marker)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, to clean up whatever the test leaves
    )
    children: dict[int, str] = {}
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "submitted\n"
        if when == "running":  # both workers are inside a task
            deadline = time.monotonic() + 60
            while not all(Path(f"{marker}{i}").exists() for i in range(2)):
                assert time.monotonic() < deadline, "the workers did not start within 60 s"
                time.sleep(0.05)
        children = _descendants(proc.pid)
        assert len(children) >= 2, "the pool started no workers"
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone, as the OOM killer would
        proc.wait()
        deadline = time.monotonic() + 20
        while (left := [p for p, s in children.items() if _alive(p, s)]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert not left, f"processes of the killed sweep still run after 20 s: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pid, start in children.items():  # only the processes this test started
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)


# --- 5. recipes have a bounded length -----------------------------------------------------------


@pytest.mark.attack("Long recipes")
def test_long_recipe_is_refused_before_any_step_is_built(monkeypatch) -> None:
    import modelzip.recipe

    built = []
    real = modelzip.recipe.config_from_dict
    monkeypatch.setattr(modelzip.recipe, "config_from_dict", lambda d: built.append(d) or real(d))
    with pytest.raises(ConfigError) as info:
        Recipe.from_list([{"method": "int8"}] * 23_000)
    message = str(info.value)
    assert "23,000 steps" in message and f"max_steps={MAX_RECIPE_STEPS:,}" in message
    assert built == []


@pytest.mark.attack("Long recipes")
def test_recipe_limit_is_inclusive_and_can_be_raised(tmp_path: Path) -> None:
    # One step per layer, as a per-layer recipe is (the same layers twice would be refused).
    def steps(n: int) -> list[dict[str, object]]:
        return [{"method": "int8", "select": {"names": [f"layer{i}"]}} for i in range(n)]

    assert len(Recipe.from_list(steps(MAX_RECIPE_STEPS))) == MAX_RECIPE_STEPS
    longer = steps(MAX_RECIPE_STEPS + 1)  # no YAML aliases
    with pytest.raises(ConfigError, match=rf"{MAX_RECIPE_STEPS + 1:,} steps"):
        Recipe.from_list(longer)
    assert len(Recipe.from_list(longer, max_steps=MAX_RECIPE_STEPS + 1)) == MAX_RECIPE_STEPS + 1
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(longer))
    with pytest.raises(ConfigError, match=r"long\.yaml: .*steps"):
        Recipe.load(path)
    assert len(Recipe.load(path, max_steps=MAX_RECIPE_STEPS + 1)) == MAX_RECIPE_STEPS + 1
    with pytest.raises(ConfigError, match=r"max_steps=0 is out of range"):
        Recipe.from_list([], max_steps=0)


@pytest.mark.attack("Long recipes")
def test_sweep_template_is_bounded_like_a_recipe() -> None:
    with pytest.raises(ConfigError, match=rf"sweep point .*{MAX_RECIPE_STEPS + 1:,} steps"):
        SweepConfig.from_dict({"recipe": [{"method": "int8"}] * (MAX_RECIPE_STEPS + 1)})


@pytest.mark.attack("Long recipes")
def test_cli_compress_refuses_a_long_recipe_in_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "long.yaml"
    path.write_text("".join("- {method: int8}\n" for _ in range(23_000)))
    # A model file that does not exist: the recipe must be refused before anything else.
    missing = str(tmp_path / "missing.mzip")
    code = modelzip.cli.main(["compress", missing, "--recipe", str(path), "--out", missing])
    assert code == 2
    assert "23,000 steps" in _one_error_line(capsys.readouterr().err)
    # --max-steps raises the bound: the recipe passes, and the missing model is what fails.
    args = ["compress", missing, "--recipe", str(path), "--out", missing, "--max-steps", "23000"]
    assert modelzip.cli.main(args) == 2
    assert "steps" not in _one_error_line(capsys.readouterr().err)


# --- fuzzed sweep files: huge products, odd ranges and seeds; bounded in time and memory ------

_AXIS_VALUES = st.one_of(st.integers(-5, 2**40), st.floats(), st.text(max_size=4), st.none())
_SPACE = st.one_of(
    st.fixed_dictionaries(
        {"low": _AXIS_VALUES, "high": _AXIS_VALUES},
        optional={"log": st.one_of(st.booleans(), _AXIS_VALUES), "integer": st.booleans()},
    ),
    st.lists(_AXIS_VALUES, max_size=5),
)
_KEYS = st.sampled_from(
    ["magnitude_prune.sparsity", "quantize_weights.bits", "svd.rank_fraction", "nope.x", "a"]
)


@pytest.mark.attack("Unbounded sweep grids and random spaces")
@PROFILE
@given(
    grid=st.dictionaries(_KEYS, st.lists(st.floats(0.1, 0.9), min_size=1, max_size=3), max_size=3),
    repeat=st.integers(1, 40),
    random=st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {"n": st.integers(-2, 10**12), "seed": st.integers(-1, 10**25)},
            optional={"space": st.dictionaries(_KEYS, _SPACE, max_size=3)},
        ),
    ),
)
def test_fuzzed_sweep_files_fail_cleanly_within_time_and_memory(grid, repeat, random) -> None:
    # Repeating axes under new keys multiplies the product: up to 3^40 points in a few lines.
    axes = {f"{k}.v{i}" if i else k: v for i in range(repeat) for k, v in grid.items()}
    data: dict = {"base": {"model": "lenet300"}, "grid": axes}
    if random is not None:
        data["random"] = random
    attack_log.tried()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    try:
        SweepConfig.from_dict(data)
    except ModelzipError as e:
        assert str(e).strip()
    # A bound on work, not a speed assertion: the expansion it guards against took minutes.
    assert time.perf_counter() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak < 1024
