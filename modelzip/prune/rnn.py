"""Hidden-unit pruning of LSTM and GRU layers, with real removal.

Removing hidden unit ``j`` of a layer deletes row ``j`` of every gate block of ``W_ih``, ``W_hh``
and the biases, column ``j`` of ``W_hh``, of the next layer's ``W_ih`` and of the linear layer that
reads the RNN's output. Zeroing those rows instead makes the unit's gates constant (σ(0) = ½,
tanh(0) = 0), so its cell and hidden state stay exactly 0 from a zero initial state: the removed
model computes what the masked one does. A unit's importance is the L2 norm of its rows (all
gates, input and recurrent weights) plus that of its outgoing column.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.counting import recurrent_workloads
from modelzip.core.errors import ModelError
from modelzip.core.module import CompressedModule, register_layer
from modelzip.core.registry import register_method
from modelzip.core.workload import Workload

_GATES = {"LSTM": 4, "GRU": 3}


@register_layer
class PrunedRNN(CompressedModule):
    """An ``nn.LSTM``/``nn.GRU`` with fewer hidden units (a plain RNN inside, saved as such)."""

    onnx_export = (
        "refused: its recurrence is a Python loop over time steps; tracing would fix the "
        "sequence length"
    )

    stands_for = "LSTM"

    def __init__(
        self,
        kind: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if kind not in _GATES:
            raise ValueError(f"kind={kind!r} is not allowed; choose one of {list(_GATES)}")
        self.kind = kind
        self.stands_for = kind  # type: ignore[misc]  (per instance: LSTM or GRU)
        cls = nn.LSTM if kind == "LSTM" else nn.GRU
        self.rnn = cls(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first)

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> PrunedRNN:
        layer = cls(type(dense).__name__, **_shape(dense))
        layer.rnn = dense
        return layer

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **_shape(self.rnn)}

    def forward(self, x: torch.Tensor, hx: Any = None) -> Any:
        return self.rnn(x, hx)

    def to_dense(self) -> nn.Module:
        return self.rnn

    def workloads(self, name: str, inputs: tuple[Any, ...], output: Any) -> list[Workload]:
        return recurrent_workloads(name, self.rnn, inputs)


def _shape(rnn: nn.Module) -> dict[str, Any]:
    """The constructor arguments of :class:`PrunedRNN` that ``rnn`` (an LSTM/GRU) gives."""
    return {k: getattr(rnn, k) for k in ("input_size", "hidden_size", "num_layers", "bias",
                                         "batch_first")}  # fmt: skip


def _check_rnn(rnn: nn.Module) -> None:
    if type(rnn).__name__ not in _GATES or rnn.bidirectional or getattr(rnn, "proj_size", 0):
        raise ModelError(f"hidden-unit pruning supports uni-directional LSTM/GRU, got {rnn}")


def hidden_scores(rnn: nn.Module, consumer: nn.Linear | None = None) -> list[torch.Tensor]:
    """Per layer, the importance of each hidden unit (see the module docstring)."""
    _check_rnn(rnn)
    g, h = _GATES[type(rnn).__name__], rnn.hidden_size
    scores = []
    for layer in range(rnn.num_layers):
        rows = [getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")]
        s = sum(w.detach().reshape(g, h, -1).pow(2).sum((0, 2)) for w in rows)
        nxt = (
            getattr(rnn, f"weight_ih_l{layer + 1}")
            if layer + 1 < rnn.num_layers
            else consumer.weight
            if consumer is not None
            else None
        )
        if nxt is not None:
            s = s + nxt.detach().pow(2).sum(0)
        scores.append(s.sqrt())
    return scores


@torch.no_grad()
def remove_hidden_units(
    rnn: nn.Module, keep: list[torch.Tensor], consumer: nn.Linear | None = None
) -> tuple[nn.Module, nn.Linear | None]:
    """A smaller RNN keeping units ``keep[l]`` of each layer (equal counts), and the consumer."""
    _check_rnn(rnn)
    sizes = {len(k) for k in keep}
    if len(sizes) != 1 or len(keep) != rnn.num_layers:
        raise ValueError("keep the same number of units in every layer (nn.LSTM has one size)")
    g, h, n = _GATES[type(rnn).__name__], rnn.hidden_size, sizes.pop()
    new = type(rnn)(
        rnn.input_size,
        n,
        rnn.num_layers,
        bias=rnn.bias,
        batch_first=rnn.batch_first,
        dropout=rnn.dropout,
    )
    new = new.to(device=rnn.weight_ih_l0.device, dtype=rnn.weight_ih_l0.dtype)
    for layer in range(rnn.num_layers):
        k = keep[layer].to(rnn.weight_ih_l0.device)
        rows = (torch.arange(g, device=k.device)[:, None] * h + k).reshape(-1)
        w_ih = getattr(rnn, f"weight_ih_l{layer}")[rows]
        if layer > 0:
            w_ih = w_ih[:, keep[layer - 1].to(k.device)]
        getattr(new, f"weight_ih_l{layer}").copy_(w_ih)
        getattr(new, f"weight_hh_l{layer}").copy_(getattr(rnn, f"weight_hh_l{layer}")[rows][:, k])
        if rnn.bias:
            for b in ("bias_ih", "bias_hh"):
                getattr(new, f"{b}_l{layer}").copy_(getattr(rnn, f"{b}_l{layer}")[rows])
    new_consumer = None
    if consumer is not None:
        last = keep[-1].to(consumer.weight.device)
        new_consumer = nn.Linear(n, consumer.out_features, consumer.bias is not None)
        new_consumer = new_consumer.to(device=consumer.weight.device, dtype=consumer.weight.dtype)
        new_consumer.weight.copy_(consumer.weight[:, last])
        if consumer.bias is not None:
            new_consumer.bias.copy_(consumer.bias)
    return new, new_consumer


def _consumer(model: nn.Module, rnn_name: str) -> str | None:
    """The linear layer that reads the RNN's output sequence, found with torch.fx."""
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:
        raise ModelError(f"hidden-unit pruning must trace the model with torch.fx: {e}") from None
    node = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == rnn_name), None)
    if node is None:
        return None
    frontier, found = list(node.users), []
    while frontier:
        user = frontier.pop()
        if user.op == "call_function" and getattr(user.target, "__name__", "") == "getitem":
            if user.args[1] == 0:  # the output sequence, not the final states
                frontier.extend(user.users)
        elif user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.Linear):
            found.append(user.target)
        elif user.op == "call_module" and isinstance(
            gm.get_submodule(user.target), (nn.Dropout, nn.Identity)
        ):
            frontier.extend(user.users)
        else:
            raise ModelError(
                f"the output of {rnn_name!r} goes through {user.format_node()}, "
                "which hidden-unit pruning does not follow"
            )
    if len(found) > 1:
        raise ModelError(f"the output of {rnn_name!r} feeds several layers: {found}")
    return found[0] if found else None


@dataclasses.dataclass(frozen=True)
class HiddenPruneConfig(MethodConfig):
    """Remove the ``round(sparsity · H)`` least important hidden units of every LSTM/GRU layer,
    and the matching inputs of the next layer and of the linear layer reading the outputs.

    Parameters
    ----------
    sparsity:
        Fraction of hidden units removed, in [0, 1).
    """

    method = "hidden_prune"
    default_types = ("LSTM", "GRU")
    sparsity: float = 0.5

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)


@register_method(
    HiddenPruneConfig, family="prune", scope="model", noop=HiddenPruneConfig(sparsity=0.0)
)
def hidden_prune(model: nn.Module, config: HiddenPruneConfig, ctx: Context) -> None:
    """Hidden-unit pruning of LSTM/GRU layers with real removal."""
    for name, rnn in list(config.select.select(model, config.default_types)):
        if not isinstance(rnn, (nn.LSTM, nn.GRU)):
            continue
        consumer_name = _consumer(model, name)
        consumer = model.get_submodule(consumer_name) if consumer_name else None
        # At least one unit: torch refuses an LSTM of hidden size 0 (found by tests/reliability).
        n_keep = max(1, rnn.hidden_size - round(config.sparsity * rnn.hidden_size))
        if consumer is None or n_keep == rnn.hidden_size:
            continue  # without a linear reader the last layer's units are the model's output
        keep = [
            torch.sort(s.topk(n_keep).indices).values.cpu() for s in hidden_scores(rnn, consumer)
        ]
        new_rnn, new_consumer = remove_hidden_units(rnn, keep, consumer)
        swaps = {name: PrunedRNN.from_dense(new_rnn), consumer_name: new_consumer}
        # The two change together or not at all: a refusal of either skips the pair.
        reason = next(filter(None, (ctx.refusal(n, new) for n, new in swaps.items())), None)
        if reason is not None:
            ctx.skip(name, config.method, reason)
            continue
        for n, new in swaps.items():
            ctx.replace(n, new, method=config.method, note=f"{rnn.hidden_size}->{n_keep} units")
