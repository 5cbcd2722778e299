"""Structured pruning of transformers: whole attention heads and feed-forward neurons removed.

``head_prune`` removes the ``round(sparsity · H)`` least important heads of each attention block:
their rows of the query, key and value projections and their columns of the output projection go
together, and the block's head count is updated, so the model becomes a smaller dense model with
the same output shapes (the dimension between blocks is untouched). ``ffn_prune`` removes
feed-forward neurons: rows of the first projection and columns of the second.

The blocks are recognised by their parts, whatever the model's classes (no tracing: torch.fx
cannot trace Hugging Face models):

- separate projections ``query``/``key``/``value`` (or ``q_proj``/``k_proj``/``v_proj``) with a
  head count (``num_attention_heads`` or ``num_heads``) and a head size (``attention_head_size``
  or ``head_dim``), and the output projection as ``o_proj``/``out_proj`` beside them or as the
  parent's ``output.dense`` (BERT, RoBERTa, Hugging Face ViT);
- a packed projection ``c_attn`` (query, key and value stacked) and ``c_proj`` with
  ``num_heads``/``head_dim``/``split_size`` (GPT-2, whose layers are transposed-weight
  ``Conv1D``: they become ``nn.Linear``);
- feed-forward pairs ``intermediate.dense``/``output.dense``, ``c_fc``/``c_proj``, ``fc1``/``fc2``
  and ``nn.Sequential`` MLPs of two Linears with only activations and dropout between.

Importance is data-free: the L1 norm of everything a head (or neuron) owns, as Michel et al.
2019 ("Are Sixteen Heads Really Better than One?") and the LLM-Pruner family score structures by
weight magnitude when no gradient is at hand. A saved model records the resized layers and the
changed head counts (:mod:`modelzip.serialize`'s ``attributes``), so it loads as it was saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context
from modelzip.core.errors import ModelError
from modelzip.core.linear_like import is_linear_like, linear_view
from modelzip.core.module import CompressedModule
from modelzip.core.registry import register_method

__all__ = ["FFNPruneConfig", "HeadPruneConfig", "attention_blocks", "ffn_blocks"]


@dataclasses.dataclass
class AttentionBlock:
    """One recognised attention block: where its projections are and how to update its count."""

    name: str  # the module holding the head count
    module: nn.Module
    heads: int
    head_dim: int
    #: (layer name, number of stacked projections in its output rows: 1, or 3 for c_attn)
    inputs: list[tuple[str, int]]
    output: str
    set_heads: Callable[[int], None]


@dataclasses.dataclass
class FFNBlock:
    """One recognised feed-forward pair: ``up`` (rows = neurons) then ``down`` (columns)."""

    up: str
    down: str


def _projection(m: nn.Module) -> bool:
    """A Linear-like layer, or a compressed layer standing for one (refused later, by name)."""
    return is_linear_like(m) or getattr(m, "stands_for", "") == "Linear"


def _int(module: nn.Module, *names: str) -> int | None:
    for n in names:
        v = getattr(module, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _child(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _setter(module: nn.Module, head_dim: int) -> Callable[[int], None]:
    def set_heads(h: int) -> None:
        for attr in ("num_attention_heads", "num_heads"):
            if _int(module, attr) is not None:
                setattr(module, attr, h)
        if _int(module, "all_head_size") is not None:
            module.all_head_size = h * head_dim
        if _int(module, "split_size") is not None:
            module.split_size = h * head_dim

    return set_heads


def attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    """The attention blocks of ``model`` that :func:`head_prune` can prune, in module order."""
    blocks: list[AttentionBlock] = []
    modules = dict(model.named_modules())
    for name, m in modules.items():
        if isinstance(m, CompressedModule):
            continue
        heads = _int(m, "num_attention_heads", "num_heads")
        head_dim = _int(m, "attention_head_size", "head_dim")
        if heads is None or head_dim is None:
            continue
        if getattr(m, "is_cross_attention", False) or _int(m, "num_key_value_heads") not in (
            None,
            heads,
        ):
            continue  # cross-attention and grouped key/value heads are not handled
        parts = None
        for q, k, v in (("query", "key", "value"), ("q_proj", "k_proj", "v_proj")):
            if all(_projection(getattr(m, p, nn.Identity())) for p in (q, k, v)):
                parts = [(_join(name, p), 1) for p in (q, k, v)]
                break
        if parts is not None:
            out = next(
                (
                    _join(name, p)
                    for p in ("o_proj", "out_proj")
                    if _projection(getattr(m, p, nn.Identity()))
                ),
                None,
            )
            parent = name.rpartition(".")[0] if "." in name else ""
            if out is None and name:
                dense = _child(model, _join(parent, "output.dense"))
                out = _join(parent, "output.dense") if dense is not None else None
            if out is None or not _projection(modules.get(out, nn.Identity())):
                continue
        elif _projection(getattr(m, "c_attn", nn.Identity())) and _projection(
            getattr(m, "c_proj", nn.Identity())
        ):
            parts, out = [(_join(name, "c_attn"), 3)], _join(name, "c_proj")
        elif _projection(getattr(m, "in_proj", nn.Identity())) and _projection(
            getattr(m, "out_proj", nn.Identity())
        ):  # PackedAttention: nn.MultiheadAttention with its projections as layers
            parts, out = [(_join(name, "in_proj"), 3)], _join(name, "out_proj")
        else:
            continue
        blocks.append(AttentionBlock(name, m, heads, head_dim, parts, out, _setter(m, head_dim)))
    return blocks


#: Parameter-free modules that change a tensor's shape: not between the two layers of an MLP.
_RESHAPING = (nn.Flatten, nn.Unflatten, nn.Upsample, nn.PixelShuffle)


def _is_elementwise(m: nn.Module) -> bool:
    """Parameter-free and shape-keeping (activations, dropout): may sit inside an MLP."""
    return (
        not list(m.parameters())
        and not isinstance(m, _RESHAPING)
        and "Pool" not in type(m).__name__
    )


def _only_mlp(m: nn.Module, up: str, down: str) -> bool:
    """``m`` holds ``up`` and ``down`` and, besides them, only elementwise modules (so its forward
    can only be ``down(act(up(x)))``)."""
    return all(_is_elementwise(c) for n, c in m.named_children() if n not in (up, down))


def ffn_blocks(model: nn.Module) -> list[FFNBlock]:
    """The feed-forward pairs of ``model`` that :func:`ffn_prune` can prune, in module order:
    ``intermediate.dense``/``output.dense`` (BERT's layer), and ``c_fc``/``c_proj`` or
    ``fc1``/``fc2`` in a module holding nothing else with parameters (GPT-2's and CLIP's MLP), and
    ``nn.Sequential`` of two Linear-like layers with only activations and dropout around."""
    blocks: list[FFNBlock] = []
    for name, m in model.named_modules():
        if isinstance(m, CompressedModule):
            continue
        found = None
        a, b = _child(m, "intermediate.dense"), _child(m, "output.dense")
        if a is not None and b is not None:
            found = ("intermediate.dense", "output.dense")
        for up, down in (("c_fc", "c_proj"), ("fc1", "fc2")):
            if found is None and _child(m, up) is not None and _child(m, down) is not None:
                found = (up, down) if _only_mlp(m, up, down) else None
        if found is None and isinstance(m, nn.Sequential):
            kids = list(m.named_children())
            lin = [n for n, c in kids if _projection(c)]
            if len(lin) == 2 and _only_mlp(m, *lin):
                found = (lin[0], lin[1])
        if found is not None:
            up_layer, down_layer = _child(m, found[0]), _child(m, found[1])
            if _projection(up_layer) and _projection(down_layer):
                blocks.append(FFNBlock(_join(name, found[0]), _join(name, found[1])))
    return blocks


def _weights(model: nn.Module, name: str) -> nn.Linear:
    layer = linear_view(model.get_submodule(name))
    if not isinstance(layer, nn.Linear):
        raise ModelError(f"layer {name!r} is a {type(layer).__name__}, not a Linear-like layer")
    return layer


def _rows(layer: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(layer.in_features, len(idx), layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(layer.weight[idx])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[idx])
    return new.train(layer.training)


def _cols(layer: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), layer.out_features, layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(layer.weight[:, idx])
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new.train(layer.training)


def _keep(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    n = len(scores)
    n_keep = max(1, n - round(sparsity * n))
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    return torch.sort(order[:n_keep]).values


def _selected(config: MethodConfig, model: nn.Module, name: str) -> bool:
    return config.select.matches(name, model.get_submodule(name), config.default_types)


def _check_plain(model: nn.Module, names: list[str], method: str) -> None:
    for n in names:
        layer = model.get_submodule(n)
        if not isinstance(linear_view(layer), nn.Linear) or isinstance(layer, CompressedModule):
            raise ModelError(
                f"{method}: layer {n!r} is a {type(layer).__name__}; structured pruning resizes "
                "dense layers, so run it before the methods that compress them"
            )


def _replace(model: nn.Module, ctx: Context, name: str, new: nn.Module, method: str, note: str):
    old = model.get_submodule(name)
    model.set_submodule(name, new)
    ctx.record(name, old, new, method=method, note=note)


@dataclasses.dataclass(frozen=True)
class _BlockSparsity(MethodConfig):
    """A fraction ``sparsity`` of each block's units (heads, neurons) removed, in [0, 1); the
    blocks are found by their parts, not by layer type."""

    default_types: ClassVar[tuple[str, ...]] = ()
    sparsity: float = 0.5

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)


def _block_pruning(config_type: type[_BlockSparsity]) -> Callable[..., Any]:
    """Registers a whole-model handler of the ``prune`` family for ``config_type``."""
    return register_method(
        config_type,
        family="prune",
        scope="model",
        example=config_type(sparsity=0.5),
        noop=config_type(sparsity=0.0),
    )


@dataclasses.dataclass(frozen=True)
class HeadPruneConfig(_BlockSparsity):
    """Remove whole attention heads (query, key, value and output parts together).

    Parameters
    ----------
    sparsity:
        Fraction of each attention block's heads to remove, in [0, 1); at least one head stays.

    Notes
    -----
    ``select`` picks attention blocks by the name of the module holding the head count
    (``model.encoder.layer.0.attention.self``, ``model.transformer.h.0.attn``).
    """

    method = "head_prune"


@_block_pruning(HeadPruneConfig)
def head_prune(model: nn.Module, config: HeadPruneConfig, ctx: Context) -> None:
    """Attention-head pruning with real removal (heads ranked by the L1 norm of their weights)."""
    blocks = [b for b in attention_blocks(model) if _selected(config, model, b.name)]
    for block in blocks:
        names = [n for n, _ in block.inputs] + [block.output]
        _check_plain(model, names, config.method)
        H, d = block.heads, block.head_dim
        layers = {n: _weights(model, n) for n in names}
        out = layers[block.output]
        if out.in_features != H * d:
            raise ModelError(
                f"head_prune: {block.output!r} reads {out.in_features} features, not "
                f"{H} heads x {d}"
            )
        score = out.weight.abs().reshape(out.out_features, H, d).sum(dim=(0, 2))
        for n, stacked in block.inputs:
            w = layers[n].weight
            if w.shape[0] != stacked * H * d:
                raise ModelError(
                    f"head_prune: {n!r} has {w.shape[0]} outputs, not {stacked}x{H}x{d}"
                )
            score = score + w.abs().reshape(stacked, H, d, -1).sum(dim=(0, 2, 3))
        kept = _keep(score, config.sparsity)
        if len(kept) == H:
            continue
        cols = (kept[:, None] * d + torch.arange(d)).reshape(-1)
        note = f"heads {H}->{len(kept)}"
        for n, stacked in block.inputs:
            rows = torch.cat([cols + i * H * d for i in range(stacked)])
            _replace(model, ctx, n, _rows(layers[n], rows), config.method, note)
        _replace(model, ctx, block.output, _cols(out, cols), config.method, note)
        block.set_heads(len(kept))


@dataclasses.dataclass(frozen=True)
class FFNPruneConfig(_BlockSparsity):
    """Remove feed-forward neurons of transformer blocks (rows of the first projection, columns
    of the second), ranked by the L2 norm of their row times that of their column.

    Parameters
    ----------
    sparsity:
        Fraction of each feed-forward block's neurons to remove, in [0, 1).

    Notes
    -----
    ``select`` picks blocks by the name of their first projection (``...intermediate.dense``,
    ``...mlp.c_fc``).
    """

    method = "ffn_prune"


@_block_pruning(FFNPruneConfig)
def ffn_prune(model: nn.Module, config: FFNPruneConfig, ctx: Context) -> None:
    """Feed-forward neuron pruning with real removal."""
    for block in ffn_blocks(model):
        if not _selected(config, model, block.up):
            continue
        _check_plain(model, [block.up, block.down], config.method)
        up, down = _weights(model, block.up), _weights(model, block.down)
        if down.in_features != up.out_features:
            continue  # not a pair after all
        score = up.weight.norm(dim=1) * down.weight.norm(dim=0)
        kept = _keep(score, config.sparsity)
        if len(kept) == up.out_features:
            continue
        note = f"neurons {up.out_features}->{len(kept)}"
        _replace(model, ctx, block.up, _rows(up, kept), config.method, note)
        _replace(model, ctx, block.down, _cols(down, kept), config.method, note)
