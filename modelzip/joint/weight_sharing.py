"""Weight sharing by k-means (Deep Compression's second stage, Han et al., ICLR 2016, Section 3).

The nonzero weights of a layer are clustered into ``k = 2^b`` groups; each weight then stores the
``b``-bit index of its cluster and the layer one table of ``k`` float centroids. Pruned weights
(zeros) take no part in the clustering and stay exactly zero, so the pruning mask survives.
Clustering minimises the within-cluster sum of squares ``Σ_i Σ_{w ∈ c_i} |w − c_i|²`` (Lloyd).

The centroids are fine-tuned: the layer computes ``W = C[codes] ⊙ mask``, so autograd gives each
centroid the sum of the gradients of the weights that share it (Han et al., Fig. 3)::

    ∂L/∂C_k = Σ_{i,j} ∂L/∂W_ij · 1(codes_ij = k) · mask_ij

Centroid initialization (Section 3.2): ``linear`` (evenly spaced between the smallest and largest
weight, which the paper found best because it keeps the few large weights representable),
``density`` (equal-mass quantiles of the weights) or ``random`` (weights drawn from the layer).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from modelzip.core.composition import Composition
from modelzip.core.compressed import CompressedConv2d, CompressedLinear, WeightFormat
from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context, layer_name
from modelzip.core.module import CompressedModule, register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.joint.sparse_quant import scatter_codes
from modelzip.prune.masked import pack_mask, unpack_mask
from modelzip.quantize.layers import plain_like, require_float32
from modelzip.quantize.packing import pack_bits
from modelzip.quantize.quantizer import adaptive_table

__all__ = [
    "SharedConv2d",
    "SharedFormat",
    "SharedLinear",
    "WeightSharingConfig",
    "kmeans_centroids",
    "share_weights",
]

Init = Literal["linear", "density", "random"]


@dataclasses.dataclass(frozen=True)
class WeightSharingConfig(MethodConfig):
    """k-means weight sharing with ``2^bits`` trainable centroids per layer (Deep Compression).

    Parameters
    ----------
    bits:
        Bits of each weight's cluster index, 1-16; the layer has exactly ``2^bits`` centroids.
    init:
        Centroid initialization: ``linear`` (the paper's best), ``density`` or ``random``.
    iterations:
        Lloyd iterations at most (0 keeps the initial centroids).
    """

    method = "weight_sharing"
    bits: int = 5
    init: Init = "linear"
    iterations: int = 30

    def validate(self) -> None:
        check_range(self, "bits", 1, 16)
        check_range(self, "iterations", 0, 10_000)


def _initial_centroids(
    values: torch.Tensor, k: int, init: str, generator: torch.Generator | None
) -> torch.Tensor:
    if init == "linear":
        return torch.linspace(float(values.min()), float(values.max()), k, device=values.device)
    if init == "density":
        # Equal-mass quantiles of the weights: the heuristic table of the adaptive quantizer.
        # torch.quantile refuses very large inputs, so a deterministic subsample stands in.
        stride = max(1, values.numel() // 4_000_000)
        sample = torch.sort(values).values[::stride]
        return adaptive_table(sample[None, :], k.bit_length() - 1, optimized=False)[0]
    index = torch.randint(
        values.numel(), (k,), generator=generator, device=generator.device if generator else None
    )
    return torch.sort(values[index.to(values.device)]).values


def kmeans_centroids(
    values: torch.Tensor,
    bits: int,
    init: str = "linear",
    iterations: int = 30,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Exactly ``2^bits`` sorted centroids of the 1-d ``values`` by Lloyd's k-means.

    One-dimensional k-means with sorted centroids assigns by binary search between midpoints
    (O(n log k) per iteration on any device), which is why it is written here rather than taken
    from SciPy (``kmeans2`` computes all n·k distances, on the CPU). A cluster that empties (linear
    initialization puts centroids in the gap that pruning leaves around zero) moves to the value
    farthest from its centroid, as scikit-learn's k-means does, so that a converged table uses
    all ``2^bits`` centroids. When the values have at most ``2^bits`` distinct entries, those are
    the centroids (zero error; the rest of the table repeats the largest and is never indexed).
    """
    k = 1 << bits
    values = values.detach().reshape(-1).float()
    if values.numel() == 0:
        return torch.zeros(k, device=values.device)
    distinct = torch.unique(values)
    if distinct.numel() <= k:
        return torch.cat([distinct, distinct[-1:].expand(k - distinct.numel())])
    centroids = _initial_centroids(values, k, init, generator)
    for _ in range(iterations):
        codes = assign(values, centroids)
        sums = torch.zeros(k, device=values.device).index_add_(0, codes, values)
        counts = torch.bincount(codes, minlength=k)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if (counts == 0).any():
            new = _relocate_empty(values, new, codes, counts == 0)
        new = torch.sort(new).values
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids


def _relocate_empty(
    values: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor, empty: torch.Tensor
) -> torch.Tensor:
    """Move each empty cluster's centroid to the value worst served so far (greedy farthest
    point: each move lowers the errors near the value it took)."""
    centroids = centroids.clone()
    error = (values - centroids[codes]) ** 2
    for cluster in torch.nonzero(empty).flatten().tolist():
        worst = int(torch.argmax(error))
        if float(error[worst]) == 0.0:
            break  # every value already sits on a centroid
        centroids[cluster] = values[worst]
        error = torch.minimum(error, (values - values[worst]) ** 2)
    return centroids


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``centroids`` for each value (ties go down)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, mids, right=False)


def share_weights(
    weight: torch.Tensor, bits: int, **kmeans: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, centroids, mask)`` of ``weight``: the mask marks the nonzeros, which alone are
    clustered (``kmeans``: :func:`kmeans_centroids`'s ``init``, ``iterations``, ``generator``);
    ``codes`` (int32, the weight's shape) is 0 where the mask is False."""
    mask = weight.detach() != 0
    kept = weight.detach()[mask].float()
    centroids = kmeans_centroids(kept, bits, **kmeans)
    codes = torch.zeros(weight.shape, dtype=torch.int32, device=weight.device)
    if kept.numel():
        codes[mask] = assign(kept, centroids).to(torch.int32)
    return codes, centroids, mask


class SharedFormat(WeightFormat):
    """Storage: cluster indices ``codes`` and a ``mask`` shaped like the weight, and a trainable
    table of ``2^bits`` ``centroids``; stored as the mask's bits, the kept indices packed to
    ``bits`` bits and the table. The weight is ``C[codes] ⊙ mask``."""

    # Cluster indices into the centroid table (GatherElements), export/coded.py.
    onnx_export = "converter:coded_shared"
    executable_forms = ("dense",)  # centroids decoded once: the float product, no lookups

    codes: torch.Tensor
    mask: torch.Tensor
    centroids: nn.Parameter

    def _init_format(self, weight_shape: tuple[int, ...], bits: int) -> None:
        self.weight_shape = tuple(weight_shape)
        self.weight_bits = bits
        self.register_buffer("codes", torch.zeros(weight_shape, dtype=torch.int32))
        self.register_buffer("mask", torch.zeros(weight_shape, dtype=torch.bool))
        self.centroids = nn.Parameter(torch.zeros(1 << bits))

    def format_spec(self) -> dict[str, Any]:
        return {"bits": self.weight_bits}

    @classmethod
    def from_dense(
        cls, dense: nn.Module, config: Any, generator: torch.Generator | None = None
    ) -> Any:
        """Cluster the plain ``dense`` layer's nonzero weights as ``config`` (``bits``, ``init``,
        ``iterations``) says."""
        layer = plain_like(dense, cls, cls, "weight sharing", bits=config.bits)
        kmeans = {"init": config.init, "iterations": config.iterations, "generator": generator}
        codes, centroids, mask = share_weights(dense.weight, config.bits, **kmeans)
        layer._set(codes, centroids, mask, None)
        return layer

    @torch.no_grad()
    def _set(self, codes: torch.Tensor, centroids: torch.Tensor, mask: torch.Tensor,
             bias: torch.Tensor | None) -> None:  # fmt: skip
        self.codes.copy_(codes)
        self.mask.copy_(mask)
        self.centroids.copy_(centroids)
        if self.bias is not None and bias is not None:  # type: ignore[attr-defined]
            self.bias.copy_(bias)  # type: ignore[attr-defined]

    def decode_weight(self) -> torch.Tensor:
        """``C[codes] ⊙ mask``; differentiable in the centroids (their summed weight gradients)."""
        return self.centroids[self.codes.long()] * self.mask

    def shared_weight(self) -> torch.Tensor:
        return self.decoded_weight()

    def used_centroids(self) -> int:
        """Distinct centroids that some kept weight indexes."""
        return int(torch.unique(self.codes[self.mask]).numel())

    def sparsity(self) -> float:
        return 1.0 - float(self.mask.sum()) / self.mask.numel()

    def weight_params(self) -> int:
        return int(self.mask.sum()) + self.centroids.numel()

    def packed_state(self) -> dict[str, torch.Tensor]:
        state = {
            "codes": pack_bits(self.codes[self.mask], self.weight_bits),
            "mask_bits": pack_mask(self.mask),
            "centroids": self.centroids.detach(),
        }
        if self.bias is not None:  # type: ignore[attr-defined]
            state["bias"] = self.bias.detach()  # type: ignore[attr-defined]
        return state

    @torch.no_grad()
    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        mask = unpack_mask(state["mask_bits"], self.weight_shape).to(self.codes.device)
        codes = scatter_codes(state["codes"].to(mask.device), mask, self.weight_bits)
        self._set(codes, state["centroids"], mask, state.get("bias"))


_Shared = SharedFormat  # the name before the op/format split (joint.deep_compression)


@register_layer
class SharedLinear(SharedFormat, CompressedLinear):
    """``nn.Linear`` whose nonzero weights index ``2^bits`` shared, trainable centroids."""


@register_layer
class SharedConv2d(SharedFormat, CompressedConv2d):
    """``nn.Conv2d`` whose nonzero weights index ``2^bits`` shared, trainable centroids."""


def dense_source(module: nn.Module) -> nn.Module:
    """The plain layer to cluster: ``module`` itself, or a pruned layer's dense form (its pruned
    weights are zeros, so the mask carries over); other compressed layers are refused."""
    from modelzip.prune.masked import _Masked

    if isinstance(module, _Masked):
        return module.to_dense()
    if isinstance(module, CompressedModule):
        raise SkipLayer(
            f"already compressed as {type(module).__name__}; weight sharing applies to dense or "
            "pruned layers"
        )
    if type(module) not in (nn.Linear, nn.Conv2d):
        raise SkipLayer(f"{type(module).__name__} has no shared-weight form")
    return module


def shared_layer(
    module: nn.Module, config: Any, generator: torch.Generator | None = None
) -> SharedLinear | SharedConv2d:
    """The shared-weight form of a dense or pruned ``Linear``/``Conv2d``."""
    dense = dense_source(module)
    # Shared layers compute in float32: skip a float64 or bfloat16 layer rather than make a
    # model whose next forward pass fails (found by tests/reliability).
    require_float32(dense)
    cls = SharedLinear if isinstance(dense, nn.Linear) else SharedConv2d
    return cls.from_dense(dense, config, generator)


def sharing_note(layer: SharedFormat, source: nn.Module) -> str:
    """What the Report says about a shared layer built from ``source``: centroids used, and why
    when fewer than ``2^bits``."""
    k, used = 1 << layer.weight_bits, layer.used_centroids()
    zeros = f"{100 * layer.sparsity():.1f}% zeros kept"
    if used < k:
        weight = source.weight.detach()
        distinct = int(torch.unique(weight[weight != 0]).numel())
        why = (
            f"the layer has only {distinct} distinct nonzero weights"
            if distinct <= k
            else "k-means stopped with empty clusters (raise iterations)"
        )
        return f"{used} of {k} centroids used: {why}; {zeros}"
    return f"{k} centroids, {zeros}"


#: Clusters plain or pruned weights (pruned ones stay zero) into shared centroids.
SHARES = Composition(
    takes={"dense", "parts", "kept"},
    gives="codes",
    why={"codes": "the weights are already quantized codes"},
)


@register_method(
    WeightSharingConfig, family="joint", example=WeightSharingConfig(bits=4), composition=SHARES
)
def weight_sharing(module: nn.Module, config: WeightSharingConfig, ctx: Context) -> nn.Module:
    """k-means weight sharing: 2^b trainable centroids per layer, pruned zeros kept (Han 2016)."""
    weight = getattr(module, "weight", None)
    device = weight.device if isinstance(weight, torch.Tensor) else "cpu"
    generator = ctx.generator(device) if config.init == "random" else None
    source = dense_source(module)
    layer = shared_layer(source, config, generator)
    ctx.note(layer_name(module, ctx), sharing_note(layer, source))
    return layer
