"""LSTM / GRU / RNN whose input-to-hidden and hidden-to-hidden matrices are decomposed.

Each layer and direction keeps its two stacked-gate matrices (``gates·H × I`` and
``gates·H × H``) as any factorized linear layer of this package (low-rank, TT, HT), as in
Tjandra et al., "Compressing recurrent neural network with tensor train", IJCNN 2017, and
Yang et al., "Tensor-train recurrent neural networks for video classification", ICML 2017.
The module takes the same inputs and hidden states as the torch module it replaces.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from modelzip.core.errors import ModelError
from modelzip.core.module import (
    CompressedModule,
    dense_linear,
    layer_class,
    layer_key,
    register_layer,
)
from modelzip.core.workload import Workload

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _build(entry: list[Any]) -> CompressedModule:
    key, spec = entry
    return layer_class(key).from_spec(spec)


#: The ``nn.LSTM``/``GRU``/``RNN`` options a decomposed layer keeps (spec keys of the same names).
_RNN_OPTIONS = ("num_layers", "bias", "batch_first", "dropout", "bidirectional")


@register_layer
class DecomposedRNN(CompressedModule):
    """A recurrent layer (``mode`` LSTM, GRU, RNN_TANH or RNN_RELU) over decomposed matrices.

    Parameters
    ----------
    mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional:
        As for ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (``proj_size`` is not supported).
    cells:
        For every layer and direction (``layer·D + direction``), ``{"ih": [class, spec],
        "hh": [class, spec]}`` naming the registered layer classes of the two matrices.

    Parameter count: the sum over layers and directions of the two matrices' counts (biases
    ``b_ih``, ``b_hh`` included), e.g. ``r·(gates·H + I) + r·(gates·H + H) + 2·gates·H`` per
    layer for the low-rank form.
    """

    onnx_export = (
        "refused: its recurrence is a Python loop over time steps; tracing would fix the "
        "sequence length"
    )
    # A later quantize_weights/int8 codes the factor matrices of every cell (FactorQuantized).
    factor_weights = True

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        cells: list[dict[str, Any]],
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if mode not in GATES:
            raise ModelError(f"recurrent mode {mode!r} is not allowed; choose one of {list(GATES)}")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        # Per instance: a later recipe step selecting LSTM (or GRU, RNN) meets this layer.
        self.stands_for = mode if mode in ("LSTM", "GRU") else "RNN"  # type: ignore[misc]
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional = float(dropout), bidirectional
        self.directions = 2 if bidirectional else 1
        if len(cells) != num_layers * self.directions:
            raise ModelError(f"DecomposedRNN needs {num_layers * self.directions} cells")
        self.cells = [dict(c) for c in cells]
        self.ih = nn.ModuleList(_build(c["ih"]) for c in cells)
        self.hh = nn.ModuleList(_build(c["hh"]) for c in cells)

    @classmethod
    def from_dense(
        cls, dense: nn.RNNBase, config: Any = None, *, linear_cls: type | None = None
    ) -> DecomposedRNN:
        if getattr(dense, "proj_size", 0):
            raise ModelError("an LSTM with proj_size > 0 cannot be decomposed here")
        if linear_cls is None:
            from modelzip.decompose.lowrank import LowRankLinear

            linear_cls = LowRankLinear
        H, dirs = dense.hidden_size, 2 if dense.bidirectional else 1
        ih, hh, cells = [], [], []
        for layer in range(dense.num_layers):
            for direction in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                pair = []
                for kind in ("ih", "hh"):
                    W = getattr(dense, f"weight_{kind}{sfx}")
                    b = getattr(dense, f"bias_{kind}{sfx}", None) if dense.bias else None
                    try:
                        part = linear_cls.from_dense(dense_linear(W.detach(), b), config)
                    except ModelError as e:
                        raise ModelError(f"weight_{kind}{sfx}: {e}") from None
                    pair.append(part)
                ih.append(pair[0])
                hh.append(pair[1])
                cells.append(
                    {
                        k: [layer_key(type(p)), p.spec()]
                        for k, p in zip(("ih", "hh"), pair, strict=False)
                    }
                )
        options = {k: getattr(dense, k) for k in _RNN_OPTIONS}
        module = cls(dense.mode, dense.input_size, H, cells, **options)
        module.ih, module.hh = nn.ModuleList(ih), nn.ModuleList(hh)
        return module

    def _cell(
        self, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.mode == "LSTM":
            i, f, g, o = (gi + gh).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        if self.mode == "GRU":
            ir, iz, inn = gi.chunk(3, -1)
            hr, hz, hn = gh.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(inn + r * hn)
            return (1 - z) * n + z * h, None
        act = torch.tanh if self.mode == "RNN_TANH" else torch.relu
        return act(gi + gh), None

    def forward(self, input: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        if isinstance(input, PackedSequence):
            raise ModelError("DecomposedRNN does not accept PackedSequence input; pad it instead")
        unbatched = input.dim() == 2
        x = (
            input.unsqueeze(1)
            if unbatched
            else (input.transpose(0, 1) if self.batch_first else input)
        )
        T, B, _ = x.shape
        n_states, H = self.num_layers * self.directions, self.hidden_size
        lstm = self.mode == "LSTM"
        if hx is None:
            h0 = x.new_zeros(n_states, B, H)
            c0 = x.new_zeros(n_states, B, H) if lstm else None
        else:
            h0, c0 = hx if lstm else (hx, None)
            if unbatched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if c0 is not None else None
            if h0.shape != (n_states, B, H):
                raise ModelError(
                    f"hidden state has shape {tuple(h0.shape)}; expected {(n_states, B, H)}"
                )
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                idx = layer * self.directions + direction
                gi_all = self.ih[idx](layer_input)  # every time step at once
                h, c = h0[idx], (c0[idx] if c0 is not None else None)
                steps = range(T - 1, -1, -1) if direction else range(T)
                out: list[torch.Tensor] = [h] * T
                for t in steps:
                    h, c = self._cell(gi_all[t], self.hh[idx](h), h, c)
                    out[t] = h
                outputs.append(torch.stack(out))
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outputs, -1) if self.directions == 2 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
        output = layer_input
        hn = torch.stack(h_n)
        cn = torch.stack(c_n) if lstm else None
        if unbatched:
            output, hn = output.squeeze(1), hn.squeeze(1)
            cn = cn.squeeze(1) if cn is not None else None
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((hn, cn) if lstm else hn)

    def to_dense(self) -> nn.RNNBase:
        kwargs = {k: getattr(self, k) for k in _RNN_OPTIONS}
        if self.mode == "LSTM":
            dense: nn.RNNBase = nn.LSTM(self.input_size, self.hidden_size, **kwargs)
        elif self.mode == "GRU":
            dense = nn.GRU(self.input_size, self.hidden_size, **kwargs)
        else:
            act = "tanh" if self.mode == "RNN_TANH" else "relu"
            dense = nn.RNN(self.input_size, self.hidden_size, nonlinearity=act, **kwargs)
        ref = next(self.parameters())
        dense = dense.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for idx in range(len(self.ih)):
                layer, direction = divmod(idx, self.directions)
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                for kind, part in (("ih", self.ih[idx]), ("hh", self.hh[idx])):
                    lin = part.to_dense()
                    getattr(dense, f"weight_{kind}{sfx}").copy_(lin.weight)
                    if self.bias:
                        getattr(dense, f"bias_{kind}{sfx}").copy_(lin.bias)
        return dense

    def spec(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "cells": [dict(c) for c in self.cells],
            **{k: getattr(self, k) for k in _RNN_OPTIONS},
        }

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        x = inputs[0]
        if x.dim() == 2:
            B, T = 1, x.shape[0]
        else:
            B, T = (x.shape[0], x.shape[1]) if self.batch_first else (x.shape[1], x.shape[0])
        out = []
        for idx in range(len(self.ih)):
            layer, direction = divmod(idx, self.directions)
            tag = f"{name}:l{layer}" + ("r" if direction else "")
            out += self.ih[idx].workloads_for_rows(f"{tag}.ih", T * B)
            hh = self.hh[idx].workloads_for_rows(f"{tag}.hh", B)
            out += [dataclasses.replace(w, time_steps=T) for w in hh]
        return out
