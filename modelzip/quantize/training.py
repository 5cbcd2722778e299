"""Training with quantized data objects: weights, activations, gradients, errors and updates.

The five data objects of training (the seed survey's Section IV; WAGE, Wu et al. ICLR 2018):

* **weights** -- each ``Linear``/``Conv2d`` weight is quantized in the forward pass (k-bit
  symmetric per channel) with a straight-through gradient to its float copy;
* **activations** -- the input of every such layer but the first is quantized (STE);
* **gradients** -- the gradient of every parameter, as autograd produces it;
* **errors** -- the gradient flowing backwards out of each layer (``∂L/∂y``), through an autograd
  function that is the identity forwards and quantizes backwards;
* **updates** -- the optimizer's step ``Δ = p_new − p_old``, replaced by ``Q(Δ)`` after each step.

Training signals (gradients, errors, updates) use a per-tensor scale ``max|x|`` and stochastic
rounding by default, which keeps them unbiased (deterministic rounding would zero small
updates). ``wage()`` is the 2-8-8-8 setting of WAGE (weights 2, activations 8, gradients 8,
errors 8 bits) with these dynamic scales in place of WAGE's fixed shifts.

>>> qt = QuantizedTraining(model, TrainingQuantConfig(errors=4))
>>> train(model, data, config, callbacks=qt.callbacks)
>>> qt.remove()
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.core.frozen import ConfigBase, check_range
from modelzip.quantize.fake import fake_quantize_weight, ste
from modelzip.quantize.quantizer import stochastic_round

__all__ = ["QuantizedTraining", "TrainingQuantConfig", "quantize_signal", "wage"]

OBJECTS = ("weights", "activations", "gradients", "errors", "updates")


@dataclasses.dataclass(frozen=True)
class TrainingQuantConfig(ConfigBase):
    """Bits of each data object during training (None: float).

    Parameters
    ----------
    weights, activations, gradients, errors, updates:
        Bit-widths, 2-16, or None.
    rounding:
        Rounding of gradients, errors and updates (weights and activations: nearest).
    """

    weights: int | None = None
    activations: int | None = None
    gradients: int | None = None
    errors: int | None = None
    updates: int | None = None
    rounding: Literal["stochastic", "nearest"] = "stochastic"

    def validate(self) -> None:
        for name in OBJECTS:
            check_range(self, name, 2, 16)


def wage() -> TrainingQuantConfig:
    """WAGE's 2-8-8-8 bit-widths (weights, activations, gradients, errors)."""
    return TrainingQuantConfig(weights=2, activations=8, gradients=8, errors=8)


def quantize_signal(
    x: torch.Tensor, bits: int, stochastic: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` on ``2^(bits−1)−1`` symmetric levels per sign, scale ``max|x|`` (per tensor).

    Stochastic rounding draws the upper level with probability equal to the distance from the
    lower one, so ``E[Q(x)] = x``.
    """
    s = x.detach().abs().max()
    if not torch.isfinite(s) or s == 0:
        return x
    n = 2 ** (bits - 1) - 1
    t = x / s * n
    t = stochastic_round(t, generator) if stochastic else torch.round(t)
    return t.clamp(-n, n) * (s / n)


class _QuantizeBackward(torch.autograd.Function):
    """Identity forwards; quantizes the gradient (the error) backwards."""

    @staticmethod
    def forward(ctx, x, bits, stochastic, generator):  # type: ignore[override]
        ctx.bits, ctx.stochastic, ctx.generator = bits, stochastic, generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return quantize_signal(grad, ctx.bits, ctx.stochastic, ctx.generator), None, None, None


class _WeightQuant(nn.Module):
    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(w, "uniform", self.bits, per_channel=True)


class QuantizedTraining:
    """Install the quantizers of ``config`` on the ``Linear`` and ``Conv2d`` layers of ``model``.

    Attach before the optimizer is built (``train`` builds it): quantized weights are
    parametrizations, so their float copies are what the optimizer sees. Pass
    :attr:`callbacks` to :func:`modelzip.train.train` (the update quantizer runs after each
    step); :meth:`remove` takes everything off again (weights keep their float values).
    """

    def __init__(self, model: nn.Module, config: TrainingQuantConfig, seed: int = 0) -> None:
        self.model, self.config = model, config
        self.generator = torch.Generator().manual_seed(seed)
        self._handles: list[Any] = []
        self._parametrized: list[nn.Module] = []
        self._previous: dict[int, torch.Tensor] = {}
        stochastic = config.rounding == "stochastic"
        layers = [m for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d)]
        for i, layer in enumerate(layers):
            if config.weights:
                parametrize.register_parametrization(layer, "weight", _WeightQuant(config.weights))
                self._parametrized.append(layer)
            if config.activations and i > 0:
                self._handles.append(layer.register_forward_pre_hook(self._activation_hook))
            if config.errors:
                self._handles.append(layer.register_forward_hook(self._error_hook))
        if config.gradients:
            for p in model.parameters():
                self._handles.append(
                    p.register_hook(
                        lambda g: quantize_signal(g, config.gradients, stochastic, self._gen(g))
                    )
                )
        self.callbacks = [self._quantize_updates] if config.updates else []
        if config.updates:
            self._snapshot()

    def _gen(self, t: torch.Tensor) -> torch.Generator | None:
        return self.generator if t.device.type == "cpu" else None

    def _activation_hook(self, _: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        q = quantize_signal(x.detach(), self.config.activations or 8, False)
        return (ste(x, q), *args[1:])

    def _error_hook(self, _: nn.Module, __: Any, out: torch.Tensor) -> torch.Tensor:
        if not out.requires_grad:
            return out
        stochastic = self.config.rounding == "stochastic"
        return _QuantizeBackward.apply(out, self.config.errors, stochastic, self._gen(out))

    def _snapshot(self) -> None:
        self._previous = {id(p): p.detach().clone() for p in self.model.parameters()}

    @torch.no_grad()
    def _quantize_updates(self, model: nn.Module, step: int, epoch: int) -> None:
        stochastic = self.config.rounding == "stochastic"
        for p in model.parameters():
            old = self._previous.get(id(p))
            if old is None or old.shape != p.shape:
                continue
            delta = quantize_signal(p - old, self.config.updates or 8, stochastic, self._gen(p))
            p.copy_(old + delta)
            old.copy_(p)

    def remove(self) -> None:
        """Take the hooks and weight quantizers off (the float weights stay)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for layer in self._parametrized:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        self._parametrized.clear()
