"""Neuron (channel) pruning with real removal: the model becomes a smaller dense model.

For each prunable group of coupled channels (:func:`modelzip.prune.dependency.channel_graph`),
the ``round(sparsity · C)`` least important channels (:mod:`modelzip.prune.criteria`) are
removed from every member: the producing filters, the BatchNorm entries, depthwise kernels, and
the matching input channels (or, after a flatten, the ``H·W`` input features) of every consumer.

:func:`mask_channels` zeroes the same channels instead (filters, biases, BN scales and shifts),
which computes exactly what the removed model computes; it is the reference in tests.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from modelzip.core.composition import Composition
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context, replace_module
from modelzip.core.errors import ModelError
from modelzip.core.registry import Knob, register_method
from modelzip.prune.criteria import channel_scores
from modelzip.prune.dependency import ChannelGraph, Segments, channel_graph, compressed_owner


def select_channels(
    graph: ChannelGraph,
    scores: dict[int, torch.Tensor],
    sparsity: float,
    groups: set[int] | None = None,
    min_channels: int = 1,
    round_to: int = 1,
) -> dict[int, torch.Tensor]:
    """``root -> kept channel indices`` (sorted): the ``C - round(sparsity·C)`` best per group,
    that count rounded to the nearest multiple of ``round_to`` (never 0, never above ``C``)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} is out of range; allowed [0, 1)")
    keep = {}
    for root, channels in graph.groups.items():
        if groups is not None and root not in groups:
            continue
        n_keep = channels - round(sparsity * channels)
        if round_to > 1 and n_keep < channels:
            # Widths that are multiples of the vector length run at full speed in oneDNN;
            # odd widths (11, 45) fall to slower kernels and can cost more than they save.
            n_keep = min(channels, max(round_to, round_to * round(n_keep / round_to)))
        n_keep = max(min(min_channels, channels), n_keep)
        order = torch.sort(scores[root].detach().float().cpu(), descending=True, stable=True)
        keep[root] = torch.sort(order.indices[:n_keep]).values
    return keep


def _index(graph: ChannelGraph, segments: Segments, keep: dict[int, torch.Tensor]) -> torch.Tensor:
    """Kept positions along a value's channel dimension (through concat and flatten)."""
    parts, offset = [], 0
    for space, channels, rep in segments:
        root = graph.space_root.get(space, -1)
        idx = keep[root] if root in keep else torch.arange(channels)
        parts.append((idx[:, None] * rep + torch.arange(rep)).reshape(-1) + offset)
        offset += channels * rep
    return torch.cat(parts)


def _slices(
    graph: ChannelGraph, keep: dict[int, torch.Tensor]
) -> dict[str, dict[str, torch.Tensor]]:
    """``module -> {"out"|"in"|"through": kept indices}`` for modules that lose channels."""
    plan: dict[str, dict[str, torch.Tensor]] = {}
    for m in graph.members:
        idx = _index(graph, m.segments, keep)
        total = sum(c * r for _, c, r in m.segments)
        if len(idx) < total:
            plan.setdefault(m.name, {})[m.role] = idx
    return plan


@torch.no_grad()
def mask_channels(model: nn.Module, graph: ChannelGraph, keep: dict[int, torch.Tensor]) -> None:
    """Zero the pruned channels in place (the reference :func:`remove_channels` must equal)."""
    for name, roles in _slices(graph, keep).items():
        if "param" in roles:
            p = model.get_parameter(name)
            axis = _param_axis(graph, name)
            drop = torch.ones(p.shape[axis], dtype=torch.bool)
            drop[roles["param"]] = False
            p.index_fill_(axis, torch.nonzero(drop).flatten().to(p.device), 0)
            continue
        mod = model.get_submodule(name)
        for role, idx in roles.items():
            if role == "in":
                continue
            drop = torch.ones(mod.weight.shape[0], dtype=torch.bool)
            drop[idx] = False
            drop = drop.to(mod.weight.device)
            mod.weight[drop] = 0
            if mod.bias is not None:
                mod.bias[drop] = 0


def _param_axis(graph: ChannelGraph, name: str) -> int:
    kind = next(m.kind for m in graph.members if m.name == name and m.role == "param")
    return int(kind.removeprefix("axis"))


@torch.no_grad()
def _slice_param(model: nn.Module, name: str, axis: int, idx: torch.Tensor) -> None:
    """Keep ``idx`` along ``axis`` of the parameter ``name`` (a layer scale, a norm's weight)."""
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    old = getattr(owner, attr)
    new = nn.Parameter(old.index_select(axis, idx.to(old.device)), old.requires_grad)
    setattr(owner, attr, new)
    if isinstance(owner, nn.LayerNorm):  # LayerNorm2d and kin read normalized_shape
        owner.normalized_shape = (new.shape[0],)


@torch.no_grad()
def _slice_module(mod: nn.Module, roles: dict[str, torch.Tensor]) -> nn.Module:
    device = mod.weight.device
    out = roles.get("out", roles.get("through"))
    inp = roles.get("in")
    w = mod.weight
    if out is not None:
        w = w[out.to(device)]
    if inp is not None:
        w = w[:, inp.to(device)]
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        new = type(mod)(len(out), mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
        if mod.track_running_stats:
            new.running_mean.copy_(mod.running_mean[out.to(device)])
            new.running_var.copy_(mod.running_var[out.to(device)])
            new.num_batches_tracked.copy_(mod.num_batches_tracked)
    elif isinstance(mod, nn.LayerNorm):
        new = nn.LayerNorm(len(out), mod.eps, mod.elementwise_affine, mod.bias is not None)
    elif isinstance(mod, nn.Conv2d):
        depthwise = "through" in roles  # m = out / groups filters per input channel
        groups = w.shape[0] // (mod.out_channels // mod.groups) if depthwise else mod.groups
        new = nn.Conv2d(
            w.shape[1] * groups,
            w.shape[0],
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.dilation,
            groups,
            mod.bias is not None,
            mod.padding_mode,
        )
    else:
        new = nn.Linear(w.shape[1], w.shape[0], mod.bias is not None)
    new = new.to(device=device, dtype=mod.weight.dtype)
    if getattr(new, "weight", None) is not None:
        new.weight.copy_(w)
    if getattr(mod, "bias", None) is not None:
        new.bias.copy_(mod.bias[out.to(device)] if out is not None else mod.bias)
    new.train(mod.training)
    return new


def remove_channels(
    model: nn.Module, graph: ChannelGraph, keep: dict[int, torch.Tensor]
) -> dict[str, tuple[nn.Module, nn.Module]]:
    """Replace every module that loses channels by a smaller dense one, in place.

    A module registered under several names gets the new one under all of them (the tracer names
    it once, and the name it is called by may be another). A compressed layer whose parts were
    resized takes its channel counts from them
    (:meth:`~modelzip.core.module.CompressedModule.follow_parts`). Returns
    ``name -> (old, new)``.
    """
    changed = {}
    owners: dict[str, nn.Module] = {}
    for name, roles in _slices(graph, keep).items():
        if "param" in roles:
            _slice_param(model, name, _param_axis(graph, name), roles["param"])
            continue
        old = model.get_submodule(name)
        new = _slice_module(old, roles)
        replace_module(model, name, new)
        changed[name] = (old, new)
        found = compressed_owner(model, name)
        if found is not None:
            owners[found[0]] = found[1]
    for owner in owners.values():
        owner.follow_parts()  # type: ignore[operator]
    return changed


@dataclasses.dataclass(frozen=True)
class ChannelPruneConfig(MethodConfig):
    """Remove output channels (filters, neurons) and everything coupled to them.

    The model is traced with torch.fx; residual add groups, concatenations, flatten → linear,
    depthwise convs, squeeze-excitation scales, channels-last linears and LayerNorms (ConvNeXt,
    transformer MLPs) and per-channel layer scales are followed (see
    :mod:`modelzip.prune.dependency`); a submodule that does not trace is kept opaque. A group is
    pruned only when all its producing layers are selected; every layer left alone is in the
    Report with the reason. Needs a sample input (``data`` or ``sample``).

    A restructured layer (a depthwise-separable block, a decomposed conv, ``svd``'s
    ``LowRankLinear``) is traced through its pieces: its input channels go from its first piece
    and its output channels from its last, and it follows them (``channel_parts``); the channels
    between its pieces (a rank) stay.

    Parameters
    ----------
    sparsity:
        Fraction of each group's channels removed, in [0, 1); MACs of a conv between two pruned
        groups fall to about ``(1 - sparsity)²``.
    criterion:
        ``l1``, ``l2`` (filter norm), ``bn`` (BatchNorm scale, network slimming), ``taylor``
        (first-order Taylor from data) or ``random``.
    min_channels:
        Channels every group keeps at least.
    round_to:
        Round every pruned group's kept channels to the nearest multiple of this (never 0, never
        above the group's width). The default 8 is the float32 width of an AVX2 register:
        widths that are multiples of it run at full speed in oneDNN, while odd widths (11, 45)
        fall to slower kernels and lose about a third of the MACs saved (measured at sparsity
        0.3, batch 64, one AVX2 core: ResNet-small 1.37× with the exact widths against 2.23×
        rounded, the VGG 1.40× against 1.61×, LeNet-5 1.38× against 1.88×). Rounding moves
        each group's removed fraction from ``sparsity`` by up to half a multiple: the Report
        has the channels and MACs really kept. 1 keeps the exact count. On AVX-512, 16 (its
        float32 width, oneDNN's channel block there) can pay more: the small VGG at sparsity
        0.35 kept 24 and 40 channels, which oneDNN computes as 32 and 48 (2.16× fewer MACs,
        1.55× faster), while 16 and 48 ran 2.09× faster for 2.34× fewer MACs (one core,
        batch 64); but a 16-channel group then cannot lose any.
    taylor_batches:
        Batches of 64 training images for the Taylor criterion.
    """

    method = "channel_prune"
    sparsity: float = 0.5
    criterion: Literal["l1", "l2", "bn", "taylor", "random"] = "l1"
    min_channels: int = 1
    round_to: int = 8
    taylor_batches: int = 4

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)
        check_range(self, "min_channels", 1)
        check_range(self, "round_to", 1)
        check_range(self, "taylor_batches", 1)


def _conv_channel_block() -> int:
    """Channels oneDNN's float convolutions work on at a time here: 16 on AVX-512 (an odd multiple
    of 8 is padded up: the VGG's 24 and 40 kept channels ran as 32 and 48), else 0 (none said)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 0


def plan_channels(
    model: nn.Module, config: ChannelPruneConfig, sample: torch.Tensor, ctx: Context | None = None
) -> tuple[ChannelGraph, dict[int, torch.Tensor]]:
    """Trace, score and choose: the graph and ``root -> kept channels`` for ``config``."""
    graph = channel_graph(model, sample)
    selected = {n for n, _ in config.select.select(model, config.default_types)}
    groups = {r for r, names in graph.producers.items() if all(n in selected for n in names)}
    ctx = ctx or Context()
    scores = channel_scores(
        model,
        graph,
        config.criterion,
        data=ctx.data,
        generator=ctx.generator(),
        batches=config.taylor_batches,
    )
    keep = select_channels(
        graph, scores, config.sparsity, groups, config.min_channels, config.round_to
    )
    return graph, keep


def _refer_transformers(model: nn.Module, why: str) -> None:
    """Raise ``why`` pointing at head_prune/ffn_prune when ``model`` has transformer blocks."""
    from modelzip.prune.heads import attention_blocks, ffn_blocks

    if attention_blocks(model) or ffn_blocks(model):
        raise ModelError(
            f"{why}; for a transformer, head_prune and ffn_prune remove attention heads and "
            "feed-forward neurons without tracing"
        ) from None


#: Removes whole channels of plain layers, also of the plain pieces of a restructured layer
#: (a depthwise-separable block, a decomposed conv's factors): its input channels go from its
#: first piece, its output channels from its last, and the layer follows (``channel_parts``); the
#: channels between its pieces (a rank) stay, and a layer whose spec fixes its channels (TT) is
#: left with the reason.
CHANNELS = Composition(
    takes={"dense", "parts"},
    gives="dense",
    why={
        "kept": "channel_prune removes whole channels of plain layers, not of masked ones "
        "(prune channels first, then weights)",
        "codes": "channel_prune removes channels of float layers, not of quantized codes",
    },
)


@register_method(
    ChannelPruneConfig,
    family="prune",
    scope="model",
    example=ChannelPruneConfig(sparsity=0.5),
    noop=ChannelPruneConfig(sparsity=0.0),
    knob=Knob("sparsity", (0.25, 0.4, 0.5, 0.6)),
    composition=CHANNELS,
)
def channel_prune(model: nn.Module, config: ChannelPruneConfig, ctx: Context) -> None:
    """Filter/neuron pruning with real removal of coupled channels (fx-traced)."""
    if ctx.sample is None:
        raise ModelError("channel_prune traces the model on a sample input: pass data or sample")
    was_training = model.training
    selected = {n for n, _ in config.select.select(model, config.default_types)}
    try:
        graph, keep = plan_channels(model.eval(), config, ctx.sample, ctx)
    except ModelError as e:
        _refer_transformers(model, str(e))
        raise
    finally:
        model.train(was_training)
    if config.sparsity > 0 and graph.opaque and not keep:
        opaque = ", ".join(repr(n or "the model") for n in list(graph.opaque)[:3])
        _refer_transformers(model, f"channel_prune cannot trace {opaque} (torch.fx)")
    # Coupled layers are resized together (no one of them may be refused), so each is recorded.
    block = _conv_channel_block()
    for name, (old, new) in remove_channels(model, graph, keep).items():
        kept = new.weight.shape[0]
        note = f"{old.weight.shape[0]}->{kept} x {tuple(old.weight.shape[1:2])}"
        if block and isinstance(new, nn.Conv2d) and kept > block and kept % block:
            padded = -(-kept // block) * block
            note += (
                f" (oneDNN's AVX-512 convs compute {kept} channels as {padded}: round_to={block} "
                "keeps multiples of it)"
            )
        ctx.record(name, old, new, method=config.method, note=note)
    for name, why in graph.left.items():
        if name in selected:
            ctx.skip(name, config.method, f"output channels kept: {why}")
    for root, names in graph.producers.items():
        if root not in keep:
            for name in names:
                if name in selected:
                    others = [n for n in names if n not in selected]
                    ctx.skip(
                        name,
                        config.method,
                        f"output channels kept: its channel group is shared with {others[:3]}, "
                        "which are not selected",
                    )
    for name in graph.opaque:
        ctx.skip(name, config.method, "kept opaque (torch.fx cannot trace it): channels fixed")
