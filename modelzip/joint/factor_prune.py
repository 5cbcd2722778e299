"""Decomposition with pruning: magnitude pruning of the factors of a decomposed layer, and
decomposition of a pruned layer (the survey's joint "decomposition + pruning").

A decomposed layer (:class:`~modelzip.decompose.lowrank.LowRankLinear`, the conv chains of
Tucker-2, CP and channel / spatial low rank, TT and HT layers) holds its factors either as
parameters (TT cores) or as small ``Linear`` / ``Conv2d`` children (``first.weight``). Rather than
teach every one of them about masks, :class:`FactorPruned` wraps any of them and multiplies each
factor (every parameter with two or more dimensions) by a fixed 0/1 mask, calling the wrapped
layer through :func:`torch.func.functional_call` with the masked factors. Pruned factor entries
therefore stay zero through fine-tuning, and the saved form is the kept values plus one bit per
factor entry, as for :class:`~modelzip.prune.masked.MaskedLinear`.

The reverse order (prune, then decompose) is the same method applied to a masked layer: its
masked weight is decomposed by truncated SVD. The factors of a sparse matrix are dense, which is
why the survey finds the two orders differ.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context, layer_name
from modelzip.core.errors import ConfigError, ModelError
from modelzip.core.module import CompressedModule, layer_class, layer_key, register_layer
from modelzip.core.registry import SkipLayer, register_method
from modelzip.core.workload import Workload
from modelzip.decompose.configs import SVDConfig
from modelzip.decompose.lowrank import ChannelLowRankConv2d, LowRankLinear
from modelzip.prune.magnitude import magnitude_mask
from modelzip.prune.masked import _Masked, pack_mask, unpack_mask

__all__ = ["DecomposePruneConfig", "FactorPruned", "factor_names"]

#: Class names of the decomposition family's layers whose factors this method prunes.
DECOMPOSED_TYPES: tuple[str, ...] = (
    "LowRankLinear",
    "ChannelLowRankConv2d",
    "SpatialLowRankConv2d",
    "Tucker2Conv2d",
    "CPConv2d",
    "TTLinear",
    "TTConv2d",
    "HTLinear",
    "TuckerLinear",
)


def factor_names(layer: nn.Module) -> list[str]:
    """The factors of a decomposed layer: its parameters with at least two dimensions (factor
    matrices, conv kernels, cores), not biases or singular-value vectors."""
    return [name for name, p in layer.named_parameters() if p.dim() >= 2]


def _param_names(layer: nn.Module) -> dict[str, str]:
    """State-dict key -> parameter name, where they differ (:attr:`LowRankLinear.LEGACY_NAMES`
    for the factors it holds as plain layers)."""
    legacy = getattr(layer, "legacy_names", None)
    return legacy() if callable(legacy) else {}


@register_layer
class FactorPruned(CompressedModule):
    """A decomposed layer whose factors carry fixed pruning masks.

    Parameters
    ----------
    inner_class:
        Registered class name of the decomposed layer (:func:`modelzip.core.module.layer_key`).
    inner_spec:
        Its :meth:`~modelzip.core.module.CompressedModule.spec`.
    factors:
        Names of the masked parameters of the inner layer (``first.weight``), or their keys in its
        state dict (``factor_in``, as files name a LowRankLinear's factors).

    Stored: per factor the kept values and a bit mask, ``n/8 + 4·(1 − s)·n`` bytes in float32,
    plus the inner layer's other tensors (biases, singular values).
    """

    onnx_export = "converter:factor_pruned"
    # Masked factors run as the product of the dense weight they make (often fastest at small
    # ranks); kept as they are where measured faster.
    executable_forms = ("dense",)

    def __init__(self, inner_class: str, inner_spec: dict[str, Any], factors: list[str]) -> None:
        super().__init__()
        self.inner = layer_class(inner_class).from_spec(inner_spec)
        # The file names each factor by its key in the inner layer's state dict, which for a
        # layer holding its factors as child layers differs from the parameter's name
        # (LowRankLinear: "factor_in" is "first.weight"); masks are kept by parameter name.
        names = _param_names(self.inner)
        factors = [names.get(f, f) for f in factors]
        params = dict(self.inner.named_parameters())
        missing = [f for f in factors if f not in params]
        if missing:
            raise ModelError(f"{inner_class} has no factor parameters {missing}")
        self.factors = tuple(factors)
        for i, name in enumerate(self.factors):
            self.register_buffer(f"mask_{i}", torch.ones_like(params[name], dtype=torch.bool))

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> FactorPruned:
        """Wrap the decomposed layer ``dense`` (taken over, not copied) with all-ones masks."""
        if not isinstance(dense, CompressedModule):
            raise ModelError(f"{type(dense).__name__} is not a decomposed modelzip layer")
        if type(dense).packed_state is not CompressedModule.packed_state:
            raise ModelError(f"{type(dense).__name__} has its own packed form; cannot mask it")
        factors = factor_names(dense)
        if not factors:
            raise ModelError(f"{type(dense).__name__} has no factor matrices")
        layer = cls(layer_key(type(dense)), dense.spec(), factors)
        layer.inner = dense
        device = next(dense.parameters()).device
        return layer.to(device)

    def _state_key(self, name: str) -> str:
        """The inner layer's state-dict key of its parameter ``name``."""
        keys = {param: key for key, param in _param_names(self.inner).items()}
        return keys.get(name, name)

    def masks(self) -> dict[str, torch.Tensor]:
        """Factor name -> its boolean keep-mask."""
        return {name: getattr(self, f"mask_{i}") for i, name in enumerate(self.factors)}

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Install new masks (only the factors named) and zero the pruned entries."""
        params = dict(self.inner.named_parameters())
        for name, mask in masks.items():
            own = self.masks()[name]
            own.copy_(mask.to(own.device))
            params[name].mul_(own)

    def masked_factors(self) -> dict[str, torch.Tensor]:
        params = dict(self.inner.named_parameters())
        return {name: params[name] * mask for name, mask in self.masks().items()}

    def forward(self, *args: Any) -> Any:
        return functional_call(self.inner, self.masked_factors(), args)

    def sparsity(self) -> float:
        """Fraction of pruned factor entries, over all factors."""
        masks = list(self.masks().values())
        total = sum(m.numel() for m in masks)
        return 1.0 - sum(int(m.sum()) for m in masks) / total

    def factor_sparsity(self) -> dict[str, float]:
        """Fraction of pruned entries per factor."""
        return {n: 1.0 - float(m.sum()) / m.numel() for n, m in self.masks().items()}

    def _pruned(self) -> int:
        return sum(m.numel() - int(m.sum()) for m in self.masks().values())

    def param_count(self) -> int:
        return self.inner.param_count() - self._pruned()

    def to_dense(self) -> nn.Module:
        inner = copy.deepcopy(self.inner)
        params = dict(inner.named_parameters())
        with torch.no_grad():
            for name, mask in self.masks().items():
                params[name].mul_(mask)
        return inner.to_dense()

    def spec(self) -> dict[str, Any]:
        return {
            "inner_class": layer_key(type(self.inner)),
            "inner_spec": self.inner.spec(),
            "factors": [self._state_key(f) for f in self.factors],
        }

    def packed_state(self) -> dict[str, torch.Tensor]:
        inner = dict(self.inner.state_dict())
        state: dict[str, torch.Tensor] = {}
        for i, (name, mask) in enumerate(self.masks().items()):
            weight = inner.pop(self._state_key(name))
            state[f"factor_{i}.values"] = weight.detach()[mask].contiguous()
            state[f"factor_{i}.mask_bits"] = pack_mask(mask)
        state.update({f"inner.{k}": v for k, v in inner.items()})
        return state

    @torch.no_grad()
    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        inner = {k[len("inner.") :]: v for k, v in state.items() if k.startswith("inner.")}
        params = dict(self.inner.named_parameters())
        for i, name in enumerate(self.factors):
            shape = tuple(params[name].shape)
            mask = unpack_mask(state[f"factor_{i}.mask_bits"], shape).to(params[name].device)
            values = state[f"factor_{i}.values"]
            if values.numel() != int(mask.sum()):
                raise ValueError(f"{values.numel()} kept values for a mask of {int(mask.sum())}")
            weight = torch.zeros(shape, dtype=values.dtype, device=values.device)
            weight[mask.to(values.device)] = values
            inner[self._state_key(name)] = weight
            getattr(self, f"mask_{i}").copy_(mask)
        self.inner.load_state_dict(inner)

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        """The inner layer's ops; when it lists one op per factor (in order), each op gets its
        factor's sparsity and kept count, else every op gets the overall factor sparsity."""
        ops = self.inner.workloads(name, inputs, output)
        masks = list(self.masks().values())
        if len(ops) == len(masks):
            per = [(1.0 - float(m.sum()) / m.numel(), m.numel() - int(m.sum())) for m in masks]
        else:
            s = self.sparsity()
            per = [(s, round(s * op.weight_count)) for op in ops]
        return [
            dataclasses.replace(op, weight_sparsity=s, params=max(op.params - pruned, 0))
            for op, (s, pruned) in zip(ops, per, strict=True)
        ]


@dataclasses.dataclass(frozen=True)
class DecomposePruneConfig(MethodConfig):
    """Decomposition with pruning: magnitude-prune the factors of decomposed layers, decomposing
    dense (or pruned) layers first by truncated SVD.

    * An already decomposed layer (any of the decomposition family's, e.g. after ``svd`` or
      ``tucker2``) has each factor pruned to ``sparsity`` (the ``round(s·n)`` smallest entries);
      masks only grow, so pruning again adds to them. The rank fields are not used.
    * A ``Linear`` / ``Conv2d`` — or a pruned ``MaskedLinear`` / ``MaskedConv2d``, whose masked
      weight is decomposed: the reverse order — is first decomposed by truncated SVD
      (:class:`LowRankLinear`, channel decomposition of convs) at ``rank_fraction`` or
      ``energy``; with both unset such layers are skipped.

    Parameters
    ----------
    sparsity:
        Fraction of each factor's entries removed, in [0, 1).
    rank_fraction, energy:
        SVD rank rule for layers not yet decomposed (see :class:`SVDConfig`); at most one.
    """

    method: ClassVar[str] = "decompose_prune"
    default_types: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d", *DECOMPOSED_TYPES)
    sparsity: float = 0.5
    rank_fraction: float | None = 0.5
    energy: float | None = None

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)
        check_range(self, "rank_fraction", 0.0, 1.0, low_open=True)
        check_range(self, "energy", 0.0, 1.0, low_open=True)
        if self.rank_fraction is not None and self.energy is not None:
            raise ConfigError(
                "DecomposePruneConfig: give at most one of rank_fraction, energy; got both"
            )


def _decompose(module: nn.Module, config: DecomposePruneConfig, ctx: Context) -> nn.Module:
    if config.rank_fraction is None and config.energy is None:
        raise SkipLayer("not decomposed, and no rank_fraction or energy to decompose it with")
    dense = module.to_dense() if isinstance(module, _Masked) else module
    svd = SVDConfig(rank_fraction=config.rank_fraction, energy=config.energy)
    try:
        if type(dense) is nn.Linear:
            return LowRankLinear.from_dense(dense, svd)
        if type(dense) is nn.Conv2d:
            if dense.groups != 1:
                raise SkipLayer(f"grouped convolution (groups={dense.groups})")
            return ChannelLowRankConv2d.from_dense(dense, svd)
    except ModelError as e:
        raise ModelError(f"layer {layer_name(module, ctx)!r}: {e}") from None
    raise SkipLayer(f"{type(module).__name__} has no decomposed form")


@register_method(
    DecomposePruneConfig,
    family="joint",
    example=DecomposePruneConfig(sparsity=0.5, rank_fraction=0.5),
    noop=DecomposePruneConfig(sparsity=0.0, rank_fraction=None, energy=1.0),
)
def decompose_prune(module: nn.Module, config: DecomposePruneConfig, ctx: Context) -> nn.Module:
    """Prune the factors of decomposed layers (decomposing dense or pruned layers by SVD first)."""
    if isinstance(module, FactorPruned):
        layer = module
    else:
        if type(module).__name__ in DECOMPOSED_TYPES:
            decomposed = module
        else:
            decomposed = _decompose(module, config, ctx)
            if config.sparsity == 0.0:
                return decomposed
        try:
            layer = FactorPruned.from_dense(decomposed)
        except ModelError as e:
            raise SkipLayer(str(e)) from None
    params = dict(layer.inner.named_parameters())
    # Already-pruned entries count as the smallest, so pruning again only adds to the mask.
    layer.set_masks(
        {
            name: magnitude_mask(params[name].detach() * mask, config.sparsity) & mask
            for name, mask in layer.masks().items()
        }
    )
    ctx.note(layer_name(module, ctx), f"factor sparsity {layer.sparsity():.3f}")
    return layer
