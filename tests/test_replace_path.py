"""One replacement path for every method (issue 19): the layer loop and model-scope handlers.

Every change goes through :meth:`Context.replace` / :meth:`Context.record` and every layer left
alone through :meth:`Context.skip`, so the same rules hold whichever method runs: a shared layer
stays one object and is reported once, and a layer whose parent reads its weight tensor directly
(torch's attention and transformer fast paths) is not swapped for one whose ``.weight`` is not
what it computes with.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.context import Context
from modelzip.core.registry import get_method, list_methods
from modelzip.core.selection import Select
from modelzip.prune.schedule import GlobalPruneConfig
from modelzip.quantize.inq import INQConfig

#: Methods whose example must change a plain Linear (guards against a vacuous parametrization).
CHANGES_A_LINEAR = {
    "magnitude_prune": "layer",
    "int8": "layer",
    "svd": "layer",
    "quantize_weights": "layer",
    "deep_compression": "layer",
    "global_prune": "model",
    "inq": "model",
}

#: Methods whose replacement of a Linear has no dense ``.weight`` it computes with.
NEEDS_THE_CALL = ("int8", "svd", "quantize_weights", "qat", "inq")


def shared_model() -> nn.Sequential:
    torch.manual_seed(0)
    shared = nn.Linear(32, 32)
    return nn.Sequential(shared, nn.ReLU(), shared).eval()


class Encoder(nn.Module):
    """Two transformer layers (whose fast path reads linear1/linear2 weights) and a head."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def encoder_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Encoder().eval(), torch.randn(3, 5, 16)


def test_the_examples_reach_both_scopes() -> None:
    scopes = {get_method(m).scope for m in CHANGES_A_LINEAR}
    assert scopes == {"layer", "model"}
    assert all(get_method(m).scope == s for m, s in CHANGES_A_LINEAR.items())


@pytest.mark.parametrize("method", list_methods())
def test_a_shared_layer_stays_one_object_and_is_reported_once(method: str) -> None:
    model, x = shared_model(), torch.randn(8, 32)
    small, report = modelzip.compress(model, get_method(method).example, sample=x, measure=False)
    layer = small[0]
    assert small[2] is layer
    assert [c.name for c in report.layers] in ([], ["0"])
    assert [s.name for s in report.skipped] in ([], ["0"])
    if method in CHANGES_A_LINEAR:
        # The deploy step may turn the compressed layer back into a (faster) plain Linear; it
        # still replaces every alias at once (the assertion above).
        deployed = {d["name"] for d in report.deployment if d["form"]}
        assert report.layers, "the example changed nothing"
        assert type(layer) is not nn.Linear or "0" in deployed
    if report.layers:
        with torch.no_grad():
            torch.testing.assert_close(small(x), layer(torch.relu(layer(x))))


def test_replace_records_one_change_when_an_alias_is_reached_again() -> None:
    model = shared_model()
    ctx = Context(model=model)
    ctx.note("0", "a remark")
    new = nn.Linear(32, 32, bias=False)
    assert ctx.replace("0", new, method="m", note="swapped")
    assert ctx.replace("2", new, method="m")  # the same object reached under its other name
    assert model[0] is new and model[2] is new
    assert len(ctx.changes) == 1 and not ctx.skipped
    change = ctx.changes[0]
    assert (change.name, change.method, change.note) == ("0", "m", "swapped; a remark")
    assert (change.params_before, change.params_after) == (32 * 32 + 32, 32 * 32)
    assert (change.bytes_before, change.bytes_after) == (4 * (32 * 32 + 32), 4 * 32 * 32)
    assert not ctx.notes


@pytest.mark.parametrize("second", ["magnitude_prune", "global_prune"])
def test_a_skipped_shared_layer_is_recorded_once(second: str) -> None:
    model, x = shared_model(), torch.randn(8, 32)
    first, later = get_method("int8").example, get_method(second).example
    if second == "magnitude_prune":
        # Pruning after int8 on the same layers is refused when the recipe is built; named
        # apart, the steps pass construction and the second meets the int8 layer at run time.
        first = dataclasses.replace(first, select=Select(names=("0",)))
        later = dataclasses.replace(later, select=Select(names=("0|2",)))
    steps = [first, later]
    small, report = modelzip.compress(model, steps, sample=x, measure=False)
    skips = [s for s in report.skipped if s.method == second]
    assert [s.name for s in skips] == ["0"] and "already compressed" in skips[0].reason
    assert [c.method for c in report.layers] == ["int8"]
    assert small[0] is small[2]


def _fast_and_slow(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's outputs through the fast path (no grad: it reads the layers' weights) and
    the slow one (it calls the layers). Only the encoder: a layer outside it, such as an int8
    head, may itself compute differently with gradients on."""
    model.eval()
    with torch.no_grad():
        fast = model.encoder(x)
    slow = model.encoder(x).detach()  # grad on, trainable weights: torch takes the slow path
    return fast, slow


def test_the_fast_path_reads_weights_the_layers_do_not_compute_with() -> None:
    """The premise of the guard: without it the two paths of one model disagree."""
    from modelzip.quantize.fake import QATConfig

    model, x = encoder_model()
    layer = model.encoder.layers[0]
    layer.linear1 = get_method("qat").handler(layer.linear1, QATConfig(), Context())
    fast, slow = _fast_and_slow(model, x)
    assert not torch.allclose(fast, slow, atol=1e-4)


@pytest.mark.parametrize("method", list_methods())
def test_layers_under_a_weight_reader_are_guarded_on_every_path(method: str) -> None:
    model, x = encoder_model()
    small, report = modelzip.compress(model, get_method(method).example, sample=x, measure=False)
    fast, slow = _fast_and_slow(small, x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    keys = [(s.name, s.method) for s in report.skipped]
    assert len(keys) == len(set(keys)), keys
    for skip in report.skipped:
        assert skip.reason
    for change in report.layers:
        if change.name.startswith("encoder."):
            new, old = small.get_submodule(change.name), model.get_submodule(change.name)
            assert new.weight.shape == old.weight.shape, change
    if method in NEEDS_THE_CALL:
        reasons = {s.name: s.reason for s in report.skipped}
        for i in (0, 1):
            for linear in ("linear1", "linear2"):
                assert "TransformerEncoderLayer" in reasons[f"encoder.layers.{i}.{linear}"]
        assert [c.name for c in report.layers] == ["head"]


def test_model_scope_methods_under_a_weight_reader() -> None:
    """inq (no dense weight) skips the encoder's layers with the reason; global_prune (a masked
    layer's weight is the zeroed one it computes with) prunes them, and both paths agree."""
    model, x = encoder_model()
    linears = Select(types=("Linear",))
    _, report = modelzip.compress(model, INQConfig(select=linears), sample=x, measure=False)
    assert [c.name for c in report.layers] == ["head"]
    assert {s.name for s in report.skipped} == {
        f"encoder.layers.{i}.{n}" for i in (0, 1) for n in ("linear1", "linear2")
    }
    assert all("TransformerEncoderLayer" in s.reason for s in report.skipped)

    config = GlobalPruneConfig(sparsity=0.5, select=linears)
    small, report = modelzip.compress(model, config, sample=x, measure=False)
    # linear1, linear2 and the attention's out_proj (a Linear subclass keeping Linear's forward)
    # of both layers, and the head.
    assert len(report.layers) == 7 and not report.skipped
    assert small.encoder.layers[0].linear1.weight.eq(0).any()
    assert small.encoder.layers[1].self_attn.out_proj.weight.eq(0).any()
    fast, slow = _fast_and_slow(small, x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
