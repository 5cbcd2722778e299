"""Shared fixtures: the shipped data sets, loaded once per test session.

Data use the user's default cache (the MNIST arrays are cached there after the first load);
tests of the baseline cache point ``MODELZIP_CACHE`` at a temporary folder themselves.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# Before torch loads OpenMP: on a 2-core machine shared with other jobs, spinning OpenMP waits
# made training 17x slower with 2 threads than with 1 (see benchmarks/baselines.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from modelzip.core.registry import get_method
from modelzip.data import Dataset, TextCorpus, load_dataset
from modelzip.models import create
from modelzip.models.torchvision_compat import import_torchvision


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    data = load_dataset("mnist")
    assert isinstance(data, Dataset)
    return data


@pytest.fixture(scope="session")
def digits() -> Dataset:
    data = load_dataset("digits")
    assert isinstance(data, Dataset)
    return data


@pytest.fixture(scope="session")
def shakespeare() -> TextCorpus:
    data = load_dataset("shakespeare")
    assert isinstance(data, TextCorpus)
    return data


RECURRENT = {"LSTM", "GRU", "RNN", "Embedding"}
#: Methods whose examples need a transformer (attention heads, feed-forward blocks).
TRANSFORMER_METHODS = {"head_prune", "ffn_prune"}
#: A BERT small enough for every test: 2 layers, 4 heads of 8, vocabulary 50.
TINY_BERT = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 50,
    "max_position_embeddings": 32,
}


def model_and_sample_for(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A small zoo model that method ``name``'s example applies to, and an input batch."""
    torch.manual_seed(0)
    spec = get_method(name)
    types = set(spec.config_type.default_types)
    if name in TRANSFORMER_METHODS:  # structured pruning of attention heads and FFN neurons
        from modelzip.models import build_hf

        return build_hf(TINY_BERT).eval(), torch.randint(0, 50, (2, 8))
    # Methods that compress embeddings as tables keep their Linear/conv test model.
    if types & RECURRENT and not spec.config_type.embeddings_as_tables:
        model = create("char_lstm", vocab_size=20, embed_dim=8, hidden_size=16, num_layers=2)
        return model.eval(), torch.randint(0, 20, (2, 12))
    if "BatchNorm2d" in types:  # methods about BN need a model that has it
        model = _with_bn_statistics(create("vgg_small"))
        return model.eval(), torch.rand(4, 1, 28, 28)
    return create("lenet5").eval(), torch.rand(4, 1, 28, 28)


def _with_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial running statistics, so that folding them is tested for real."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return model


@pytest.fixture
def model_for_method():
    """``model_and_sample_for``, for tests parametrized over the registered methods."""
    return model_and_sample_for


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one CPU thread for the test: many tiny ops run far slower when a second thread
    contends with other processes for the cores (OpenMP waits), and results do not change."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def fake_deploy_clock(monkeypatch: pytest.MonkeyPatch):
    """Deploy's clock replaced: ``install(slow)`` makes a module cost 1 ms plus 10 ms per
    submodule ``slow`` picks (a tuple of classes, matched exactly, or a predicate), for the whole
    model's candidates and each layer's forms alike; nothing is really timed. Deploy times
    through :mod:`modelzip.deploy.timing` alone, so patching it there is enough."""
    from modelzip.core.timing import Timing
    from modelzip.deploy import timing

    def install(slow) -> None:
        picks = slow if callable(slow) else (lambda c: type(c) in slow)

        def cost(m: torch.nn.Module) -> float:
            return (1.0 + 10.0 * sum(bool(picks(c)) for c in m.modules())) / 1e3

        monkeypatch.setattr(timing, "time_medians", lambda ms, x, reps: [cost(m) for m in ms])
        monkeypatch.setattr(
            timing, "time_interleaved", lambda ms, x, **kw: [Timing((cost(m),)) for m in ms]
        )

    return install


# The slow lane: tests marked ``slow`` (the whole torchvision matrix, the biggest models) are
# deselected unless pytest gets --slow (`make test-slow`); `make test` stays fast.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    keep = [i for i in items if i.get_closest_marker("slow") is None]
    dropped = [i for i in items if i.get_closest_marker("slow") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


# transformers imports torchvision when it is installed; the PyPI build's compiled ops do not load
# beside the CPU torch, so declare them first (modelzip.models.torchvision_compat).
with contextlib.suppress(ImportError):
    import_torchvision()
