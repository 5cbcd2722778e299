"""Search spaces build valid networks; evolution, random search and DARTS resume from a
checkpoint to the same result; the objective rejects oversize networks and penalises targets."""

from __future__ import annotations

import random

import pytest
import torch

from modelzip.compact.nas import (
    BlockSpace,
    DartsSupernet,
    HierarchicalSpace,
    SearchObjective,
    arch_key,
    build_genotype,
    darts_search,
    model_costs,
    random_search,
    regularized_evolution,
)
from modelzip.core.errors import ConfigError


class Crash(Exception):
    pass


def cheap_score(space):
    """A deterministic stand-in for training: favours small networks with separable blocks."""

    def evaluate(arch):
        model = space.build(arch)
        params = sum(p.numel() for p in model.parameters())
        bonus = sum(op.startswith("sep") for op in arch.get("ops", arch.get("motif", [])))
        return {"score": bonus - params / 1e5, "params": params}

    return evaluate


@pytest.mark.parametrize("space", [BlockSpace(), HierarchicalSpace()], ids=["block", "hier"])
def test_spaces_build_and_mutate(space):
    rng = random.Random(0)
    for _ in range(4):
        arch = space.sample(rng)
        child = space.mutate(arch, rng)
        assert arch_key(child) != arch_key(arch)
        assert space.build(child)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("algorithm", ["evolution", "random"])
def test_search_resumes_to_the_same_result(tmp_path, algorithm):
    space = BlockSpace(blocks_per_stage=1, widths=((4, 8), (8, 12), (8, 16)))
    evaluate = cheap_score(space)

    def run(checkpoint=None, callback=None):
        common = {"seed": 3, "checkpoint": checkpoint, "callback": callback}
        if algorithm == "evolution":
            return regularized_evolution(
                space, evaluate, population=4, sample_size=2, cycles=8, **common
            )
        return random_search(space, evaluate, trials=10, **common)

    full = run()

    def crash_at_6(entry, n):
        if n == 6:
            raise Crash

    path = tmp_path / "search.json"
    with pytest.raises(Crash):
        run(path, crash_at_6)
    resumed = run(path)
    assert resumed.history == full.history
    assert resumed.best == full.best
    if algorithm == "evolution":
        assert resumed.population == full.population
        assert full.best["metrics"]["score"] >= max(e["metrics"]["score"] for e in full.history[:4])


def test_checkpoint_of_another_search_is_refused(tmp_path):
    space = BlockSpace(blocks_per_stage=1, widths=((4,), (8,), (8,)))
    path = tmp_path / "s.json"
    random_search(space, cheap_score(space), trials=2, seed=0, checkpoint=path)
    with pytest.raises(ConfigError, match="another search"):
        random_search(space, cheap_score(space), trials=2, seed=1, checkpoint=path)


def test_objective_rejects_and_penalises(digits):
    space = BlockSpace(blocks_per_stage=1, widths=((4,), (8,), (8,)))
    arch = space.sample(random.Random(0))
    small = SearchObjective(max_params=10, train_size=200, val_size=100)
    out = small(space.build(arch), digits, arch_key(arch))
    assert out["score"] == 0.0 and out["rejected"] == "max_params"
    obj = SearchObjective(train_size=300, val_size=200, lr=0.1, energy_target=1e-9)
    a = obj(space.build(arch), digits, arch_key(arch))
    b = obj(space.build(arch), digits, arch_key(arch))
    assert a == b  # seeded by the architecture
    assert a["score"] < a["accuracy"]  # the energy target is missed, so the reward is penalised
    assert obj.reward(0.9, {"energy": 0.5e-9}) == 0.9
    with pytest.raises(ConfigError, match="max_params"):
        SearchObjective(max_params=0)


def test_model_costs_report_hardware_energy():
    costs = model_costs(BlockSpace().build(BlockSpace().sample(random.Random(1))), (1, 28, 28))
    assert costs["params"] > 0 and costs["macs"] > 0
    assert costs["energy"] > 0 and costs["cycles"] > 0 and costs["latency_ms"] > 0


def test_darts_search_resumes_and_derives_a_genotype(digits, tmp_path):
    kwargs = dict(epochs=2, width=4, nodes=2, batch_size=32, train_size=128, seed=0)
    full = darts_search(digits, **kwargs)
    path = tmp_path / "darts.pt"

    def crash_after_first_epoch(record):
        raise Crash

    with pytest.raises(Crash):
        darts_search(digits, **kwargs, checkpoint=path, callback=crash_after_first_epoch)
    resumed = darts_search(digits, **kwargs, checkpoint=path)
    assert resumed.genotype == full.genotype
    torch.testing.assert_close(torch.tensor(resumed.alphas["normal"]),
                               torch.tensor(full.alphas["normal"]))  # fmt: skip
    assert len(full.genotype["normal"]) == 1 + 2  # node 1 has one input, node 2 keeps two
    net = build_genotype(full.genotype, width=4, nodes=2)
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert sum(p.numel() for p in net.parameters()) < sum(
        p.numel() for p in DartsSupernet(4, 2).parameters()
    )
