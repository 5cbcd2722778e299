"""Per-layer parameters, MACs and bytes, as :class:`~modelzip.core.workload.Workload` records.

One forward pass with hooks on the compute layers records each layer's real input and output
shapes, so the counts follow the model as it runs (strides, padding, flattening) rather than a
guess from its definition. Counting rules:

- conv: ``N·K·P·Q·(C/g)·R·S`` MACs (per group ``g``), the textbook count without bias adds;
- linear: ``N·out·in`` with ``N`` the number of rows the layer sees (batch × tokens);
- LSTM / GRU / RNN: per layer and direction, ``gates·H·(I + H)`` MACs per sample per time step
  (gates 4, 3 and 1), input and hidden matrices both counted;
- embedding: a lookup, no MACs.

Weight bytes are the stored bytes of a compressed layer (:meth:`CompressedModule.storage_bytes`),
otherwise ``params × bits / 8`` at the tensor's own dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from modelzip.core.compact_source import CompactSource, compact_source
from modelzip.core.layer_workload import plain_workload, tensor_bits, zero_fraction
from modelzip.core.linear_like import is_transposed_linear, linear_view
from modelzip.core.module import CompressedModule
from modelzip.core.running import run_hooked
from modelzip.core.workload import Workload

_RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def count_params(module: nn.Module) -> int:
    """Stored numbers of a module: parameters of plain layers, :meth:`param_count` of compressed."""
    return _sum_units(
        module,
        deployed=lambda source: source.params,
        compressed=lambda layer: layer.param_count(),
        plain=lambda params, _buffers: sum(p.numel() for p in params),
    )


def module_bytes(module: nn.Module) -> int:
    """Bytes a module occupies when saved: compressed layers' packed state, others' tensors."""
    return _sum_units(
        module,
        deployed=lambda source: source.bytes,
        compressed=lambda layer: layer.storage_bytes(),
        plain=lambda params, buffers: sum(
            t.numel() * t.element_size() for t in (*params, *buffers)
        ),
    )


def _sum_units(
    module: nn.Module,
    *,
    deployed: Callable[[CompactSource], int],
    compressed: Callable[[CompressedModule], int],
    plain: Callable[[list[torch.Tensor], list[torch.Tensor]], int],
) -> int:
    """One number summed over :func:`_units`: a deployed layer counts what its file keeps.

    A plain layer's own parameters and buffers are counted once however many layers hold them
    (a language model's output layer tied to its token embedding shares one weight).
    """
    total = 0
    units = list(_units(module))
    # Tensors of compressed layers count with their layer (a plain module may hold one too:
    # BERT's prediction head holds its decoder's bias).
    seen: set[int] = {
        id(t)
        for sub in units
        if isinstance(sub, CompressedModule) and compact_source(sub) is None
        for t in (*sub.parameters(), *sub.buffers())
    }

    def unseen(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
        fresh = [t for t in tensors if id(t) not in seen]
        seen.update(id(t) for t in fresh)
        return fresh

    for sub in units:
        source = compact_source(sub)
        if source is not None:
            total += deployed(source)
        elif isinstance(sub, CompressedModule):
            total += compressed(sub)
        else:
            params = unseen(sub.parameters(recurse=False))
            total += plain(params, unseen(sub.buffers(recurse=False)))
    return total


def _units(module: nn.Module) -> Iterator[nn.Module]:
    """Modules to count once each: a compressed layer stands for its whole subtree."""
    stack = [module]
    seen: set[int] = set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        yield m
        if compact_source(m) is None and not (isinstance(m, CompressedModule) and m.leaf):
            stack.extend(reversed(list(m.children())))
        else:  # counted as one unit: its parts, also found under other names, are counted
            seen.update(id(sub) for sub in m.modules())


def weight_sparsity(module: nn.Module) -> float:
    """Fraction of exactly-zero entries in a layer's weight (0 when it has none)."""
    if isinstance(module, CompressedModule) and hasattr(module, "sparsity"):
        return float(module.sparsity())
    return zero_fraction(getattr(module, "weight", None))


def dense_workload(
    name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any, *, params: int | None = None
) -> Workload:
    """The workload of one call of a plain torch compute layer, from its real tensors (``params``
    overrides its parameter count).

    A compressed layer found inside another (a decomposed layer's factor that ``materialize``
    turned into a binary or sparse kernel) describes itself through its ``workloads``.
    """
    if isinstance(module, CompressedModule):
        own = module.workloads(name, inputs, output)
        if len(own) == 1:
            return own[0] if params is None else dataclasses.replace(own[0], params=params)
    return plain_workload(
        name, module, inputs, output, params=params, sparsity=weight_sparsity(module)
    )


def recurrent_workloads(name: str, module: nn.RNNBase, inputs: tuple[Any, ...]) -> list[Workload]:
    """One workload per layer of an ``nn.LSTM``/``GRU``/``RNN`` call (directions as groups)."""
    x = inputs[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        batch, steps = int(x.batch_sizes[0]), len(x.batch_sizes)
    elif x.dim() == 2:
        batch, steps = 1, x.shape[0]
    else:
        batch, steps = (x.shape[0], x.shape[1]) if module.batch_first else (x.shape[1], x.shape[0])
    gates = _RECURRENT_GATES[type(module).__name__]
    dirs = 2 if module.bidirectional else 1
    hidden = module.hidden_size
    out_hidden = getattr(module, "proj_size", 0) or hidden
    result = []
    for layer in range(module.num_layers):
        in_size = module.input_size if layer == 0 else out_hidden * dirs
        params = sum(
            p.numel()
            for n, p in module.named_parameters()
            if n.endswith(f"_l{layer}") or n.endswith(f"_l{layer}_reverse")
        )
        c = in_size + out_hidden
        wbits = tensor_bits(module.weight_ih_l0)
        result.append(
            Workload(
                name=(f"{name}.l{layer}" if name else f"l{layer}")
                if module.num_layers > 1
                else name,
                op="recurrent",
                module_type=type(module).__name__,
                N=batch,
                C=c,
                K=gates * hidden,
                groups=dirs,
                time_steps=steps,
                params=params,
                weight_bits=wbits,
                act_bits=tensor_bits(x if isinstance(x, torch.Tensor) else None),
                weight_bytes=(dirs * gates * hidden * c * wbits + 7) // 8,
                input_bytes=batch * steps * in_size * 4,
                output_bytes=batch * steps * out_hidden * dirs * 4,
            )
        )
    return result


def _is_compute(module: nn.Module) -> bool:
    return isinstance(
        module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.RNNBase)
    ) or is_transposed_linear(module)


def collect_workloads(model: nn.Module, sample: Any) -> list[Workload]:
    """Run ``model(sample)`` once with hooks and return the workloads of its compute layers.

    Compressed layers describe themselves (:meth:`CompressedModule.workloads`), so a decomposed
    layer appears as its small ops and a quantized one with its bit-widths.
    """
    records: list[Workload] = []
    hooks: list[tuple[nn.Module, Callable[..., Any]]] = []
    skip_below: list[str] = []
    hooked: set[int] = set()
    # Every name, not the first only: a tied output layer is also its embedding's table, inside
    # a compressed layer under its first name, and computes under the other. One hook per layer.
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in hooked or any(p == "" or name.startswith(p + ".") for p in skip_below):
            continue  # inside a compressed layer, which describes itself ("" is the root)
        source = compact_source(module)
        if source is not None:
            # A deployed layer is costed as the compressed layer it runs for (its bits, its
            # zeros): the CPU form it took is this machine's choice, not the model's.
            skip_below.append(name)
            layer = source.layer()
            weight = next(module.parameters(), None)
            if weight is not None:  # the deployed layer's dtype (a float64 model stays float64)
                layer = layer.to(weight.dtype)
            hook = _compressed_hook(name, records, layer)
        elif isinstance(module, CompressedModule) and module.leaf:
            skip_below.append(name)
            hook = _compressed_hook(name, records)
        elif _is_compute(module):
            hook = _dense_hook(name, records)
        else:
            continue
        hooked.add(id(module))
        hooks.append((module, hook))
    run_hooked(model, sample, hooks)
    return records


def _dense_hook(name: str, records: list[Workload]):
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, nn.RNNBase):
            records.extend(recurrent_workloads(name, module, inputs))
        elif is_transposed_linear(module):  # GPT-2's Conv1D: costed as the Linear it is
            records.append(dense_workload(name, linear_view(module), inputs, output))
        else:
            records.append(dense_workload(name, module, inputs, output))

    return hook


def _compressed_hook(name: str, records: list[Workload], layer: CompressedModule | None = None):
    def hook(module: CompressedModule, inputs: tuple[Any, ...], output: Any) -> None:
        records.extend((layer or module).workloads(name, inputs, output))

    return hook


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One row of ``modelzip inspect``: a layer with its counts summed over its workloads."""

    name: str
    module_type: str
    params: int
    macs: int
    effective_macs: int
    weight_bits: int
    weight_sparsity: float
    weight_bytes: int
    activation_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def layer_rows(workloads: list[Workload]) -> list[LayerRow]:
    """Group workloads by layer (a decomposed layer's ops share the layer's name prefix)."""
    rows: dict[str, list[Workload]] = {}
    for w in workloads:
        rows.setdefault(w.name.split(":")[0], []).append(w)
    out = []
    for name, ws in rows.items():
        macs = sum(w.macs for w in ws)
        out.append(
            LayerRow(
                name=name,
                module_type=ws[0].module_type,
                params=sum(w.params for w in ws),
                macs=macs,
                effective_macs=sum(w.effective_macs for w in ws),
                weight_bits=max(w.weight_bits for w in ws),
                weight_sparsity=(
                    sum(w.weight_sparsity * w.weight_count for w in ws)
                    / max(1, sum(w.weight_count for w in ws))
                ),
                weight_bytes=sum(w.weight_bytes for w in ws),
                activation_bytes=ws[0].input_bytes + ws[-1].output_bytes,
            )
        )
    return out
