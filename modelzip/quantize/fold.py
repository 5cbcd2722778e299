"""``fold_bn`` as a recipe step: BN layers folded into the conv or linear layer before them.

Pairs are found by :func:`modelzip.quantize.bn.fold_bn` (consecutive children of one container).
Definition order is the data flow only in ``nn.Sequential``; elsewhere (a pre-activation block
defines ``conv`` then ``bn`` but applies ``bn`` first) a fold would be wrong, so the handler checks
the model's outputs on the sample batch before and after, and undoes the fold if they differ.
Without a sample it folds only inside ``nn.Sequential`` containers.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from modelzip.core.config import MethodConfig
from modelzip.core.context import Context
from modelzip.core.errors import ModelError
from modelzip.core.registry import register_method
from modelzip.core.running import eval_inference, full_float32
from modelzip.quantize.bn import fold_bn


@dataclasses.dataclass(frozen=True)
class FoldBNConfig(MethodConfig):
    """Fold inference-mode batch normalization into the preceding conv / linear layer."""

    method = "fold_bn"
    default_types = ("Conv2d", "Linear", "BatchNorm1d", "BatchNorm2d")


def _outputs(model: nn.Module, sample: torch.Tensor) -> torch.Tensor:
    with eval_inference(model), full_float32():
        return model(sample)


@register_method(FoldBNConfig, family="quantize", scope="model")
def fold_batchnorm(model: nn.Module, config: FoldBNConfig, ctx: Context) -> None:
    """Fold BatchNorm into the preceding conv/linear layer (checked on the sample batch)."""
    before = dict(model.named_modules())
    reference = _outputs(model, ctx.sample) if ctx.sample is not None else None
    pairs = fold_bn(
        model,
        sequential_only=ctx.sample is None,
        accept=lambda name, layer: config.select.matches(name, layer, config.default_types),
    )
    if reference is not None and pairs:
        got = _outputs(model, ctx.sample)
        scale = float(reference.abs().max().clamp_min(1e-12))
        if not torch.allclose(got, reference, rtol=1e-4, atol=1e-5 * scale):
            for layer, bn in pairs:  # the originals are untouched: put them back
                model.set_submodule(layer, before[layer])
                model.set_submodule(bn, before[bn])
            raise ModelError(
                "fold_bn changed the model's outputs: in "
                f"{', '.join(b for _, b in pairs)} a BN does not directly follow the layer "
                "defined before it; exclude those layers with select"
            )
    # Not a swap of one module (a layer changes and its BN goes), so recorded, not replaced.
    for layer, bn in pairs:
        for name in (layer, bn):
            note = f"folded into {layer}" if name == bn else f"absorbed {bn}"
            ctx.record(
                name, before[name], model.get_submodule(name), method=config.method, note=note
            )
