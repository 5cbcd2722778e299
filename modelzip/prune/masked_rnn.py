"""``nn.LSTM``/``nn.GRU``/``nn.RNN`` whose weight matrices carry fixed 0/1 masks.

Every ``weight_ih_l*``/``weight_hh_l*`` (and an LSTM's projection ``weight_hr_l*``) has a boolean
mask; biases are kept whole. The forward runs torch's own recurrent kernel with ``weight * mask``
as its weights, so the layer computes exactly what the dense layer with the pruned weights zeroed
computes, and gradients reach the kept weights only: plain fine-tuning (SGD, Adam, weight decay)
leaves pruned weights at zero, as for :class:`~modelzip.prune.masked.MaskedLinear`.

Saved, each weight is its kept values and a bit mask, like the masked linear layers.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from modelzip.core.counting import recurrent_workloads
from modelzip.core.module import CompressedModule, register_layer
from modelzip.core.workload import Workload
from modelzip.prune.masked import MaskFormat, pack_mask, unpack_mask

_KINDS: dict[str, type[nn.RNNBase]] = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}

MaskFn = Callable[[torch.Tensor, float], torch.Tensor]


def _shape(rnn: nn.RNNBase) -> dict[str, Any]:
    """The JSON-able constructor arguments of ``rnn`` (an LSTM/GRU/RNN)."""
    shape: dict[str, Any] = {
        k: getattr(rnn, k)
        for k in (
            "input_size",
            "hidden_size",
            "num_layers",
            "bias",
            "batch_first",
            "dropout",
            "bidirectional",
        )
    }
    if isinstance(rnn, nn.LSTM):
        shape["proj_size"] = rnn.proj_size
    if isinstance(rnn, nn.RNN):
        shape["nonlinearity"] = rnn.nonlinearity
    return shape


def _mask_name(weight_name: str) -> str:
    return f"mask_{weight_name}"


@register_layer
class MaskedRNN(CompressedModule):
    """An ``nn.LSTM``/``nn.GRU``/``nn.RNN`` with a fixed pruning mask on each weight matrix."""

    stands_for: ClassVar[str] = "LSTM"
    # to_dense() is a plain recurrent layer computing the same.
    onnx_export: ClassVar[str] = "dense"

    def __init__(self, kind: str, input_size: int, hidden_size: int, **shape: Any) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind={kind!r} is not allowed; choose one of {list(_KINDS)}")
        self.kind = kind
        self.stands_for = kind  # type: ignore[misc]  (per instance: LSTM, GRU or RNN)
        self.rnn = _KINDS[kind](input_size, hidden_size, **shape)
        self.weight_names = tuple(
            n for n in self.rnn._flat_weights_names if n.startswith("weight_")
        )
        for n in self.weight_names:
            mask = torch.ones_like(getattr(self.rnn, n), dtype=torch.bool)
            self.register_buffer(_mask_name(n), mask)

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> MaskedRNN:
        """``dense`` (an ``nn.LSTM``/``GRU``/``RNN``) with nothing pruned yet, in its dtype."""
        kind = type(dense).__name__
        if _KINDS.get(kind) is not type(dense):
            raise ValueError(f"{kind} is not an nn.LSTM, nn.GRU or nn.RNN")
        first = dense.weight_ih_l0
        layer = cls(kind, **_shape(dense)).to(device=first.device, dtype=first.dtype)
        layer.rnn.load_state_dict(dense.state_dict())
        return layer

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **_shape(self.rnn)}

    def masks(self) -> dict[str, torch.Tensor]:
        """Each weight's boolean mask, by the weight's name in the recurrent layer."""
        return {n: getattr(self, _mask_name(n)) for n in self.weight_names}

    def masked_weights(self) -> dict[str, torch.Tensor]:
        """Each ``weight * mask`` (differentiable), by name."""
        return {n: getattr(self.rnn, n) * m for n, m in self.masks().items()}

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Install new masks (any subset of the weights) and zero the pruned weights."""
        for n, mask in masks.items():
            own = getattr(self, _mask_name(n))
            own.copy_(mask.to(own.device))
            getattr(self.rnn, n).mul_(own)

    @torch.no_grad()
    def prune_with(self, mask_fn: MaskFn, sparsity: float) -> None:
        """Each weight matrix to ``sparsity`` on its own; pruned weights stay pruned."""
        masks, weights = self.masks(), self.masked_weights()
        self.set_masks({n: mask_fn(w, sparsity) & masks[n] for n, w in weights.items()})

    # One flat tensor over all weight matrices, the view a global threshold ranks
    # (modelzip.prune.schedule.prune_layers treats masked linear layers the same way).
    @property
    def mask(self) -> torch.Tensor:
        return torch.cat([m.reshape(-1) for m in self.masks().values()])

    def masked_weight(self) -> torch.Tensor:
        return torch.cat([w.reshape(-1) for w in self.masked_weights().values()])

    def set_mask(self, flat: torch.Tensor) -> None:
        masks, offset = {}, 0
        for n, m in self.masks().items():
            masks[n] = flat[offset : offset + m.numel()].reshape(m.shape)
            offset += m.numel()
        if offset != flat.numel():
            raise ValueError(f"a flat mask of {flat.numel()} for {offset} weights")
        self.set_masks(masks)

    def weight_params(self) -> int:
        return sum(int(m.sum().item()) for m in self.masks().values())

    def sparsity(self) -> float:
        """Fraction of pruned weights over all weight matrices."""
        total = sum(m.numel() for m in self.masks().values())
        return 1.0 - self.weight_params() / total

    def param_count(self) -> int:
        biases = sum(p.numel() for n, p in self.rnn.named_parameters() if n.startswith("bias_"))
        return self.weight_params() + biases

    def forward(self, x: Any, hx: Any = None) -> Any:
        rnn = self.rnn
        # nn.RNNBase's forward reads its weights from _flat_weights (refreshed only when a weight
        # attribute is reassigned); the masked products stand there for this one call, so torch's
        # own kernel runs on them and gradients flow to the kept weights only.
        rnn._update_flat_weights()
        own = rnn._flat_weights
        masked = self.masked_weights()
        rnn._flat_weights = [
            masked.get(n, w) for n, w in zip(rnn._flat_weights_names, own, strict=True)
        ]
        try:
            return rnn(x, hx)
        finally:
            rnn._flat_weights = own

    def to_dense(self) -> nn.RNNBase:
        dense = copy.deepcopy(self.rnn)
        with torch.no_grad():
            for n, mask in self.masks().items():
                getattr(dense, n).mul_(mask)
        return dense

    def packed_state(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for n, mask in self.masks().items():
            state[f"{n}.values"] = getattr(self.rnn, n).detach()[mask].contiguous()
            state[f"{n}.mask_bits"] = pack_mask(mask)
        for n, p in self.rnn.named_parameters():
            if n.startswith("bias_"):
                state[n] = p.detach()
        return state

    @torch.no_grad()
    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        for n, own in self.masks().items():
            mask = unpack_mask(state[f"{n}.mask_bits"], tuple(own.shape)).to(own.device)
            weight = getattr(self.rnn, n)
            values = state[f"{n}.values"].to(weight)
            kept = int(mask.sum())
            if values.numel() != kept:
                raise ValueError(f"{n}: {values.numel()} kept values for a mask of {kept}")
            own.copy_(mask)
            weight.zero_()
            weight[mask] = values
        for n, p in self.rnn.named_parameters():
            if n.startswith("bias_"):
                p.copy_(state[n])

    def workloads(self, name: str, inputs: tuple[Any, ...], output: Any) -> list[Workload]:
        # Per recurrent layer (both directions), its kept weights and their sparsity.
        masks = self.masks()
        result = []
        for i, w in enumerate(recurrent_workloads(name, self.rnn, inputs)):
            own = [m for n, m in masks.items() if n.endswith((f"_l{i}", f"_l{i}_reverse"))]
            total, kept = sum(m.numel() for m in own), sum(int(m.sum()) for m in own)
            pruned = total - kept
            result.append(
                dataclasses.replace(
                    w, params=w.params - pruned, weight_sparsity=pruned / max(total, 1)
                )
            )
        return result


#: Layers whose weights carry a pruning mask: element-wise criteria and schedules prune them.
Prunable = MaskFormat | MaskedRNN
PRUNABLE = (MaskFormat, MaskedRNN)
