"""A deployed int8 model run whole by onnxruntime: the model link ``"onnxruntime"``.

PyTorch's int8 engines pay for every layer apart: a float ↔ uint8 conversion, an op dispatch, a
tensor wrapper. On small networks that is most of the time: on an AVX2 EPYC at batch 64, one
thread, static int8 LeNet-300-100 ran at 1.25× fp32 in PyTorch (FX static: 1.12×), and the same
layers exported as QDQ (:mod:`modelzip.export.qdq`) ran at about 1.8× in onnxruntime, whose
graph optimizer fuses each ``DQ → Gemm → Q`` into a ``QGemm`` (``QLinearConv`` for convs) and
runs the whole network in one call. Not all of that is int8: onnxruntime ran the fp32 network at
1.3-1.6× PyTorch's, which BENCHMARKS.md shows beside the int8 figure.

:func:`modelzip.deploy.materialize` offers this link as one more whole-model candidate for a
model whose activations are int8 (where onnxruntime runs integer kernels, not only another float
runtime): every compressed layer in its export form (the same codes and calibrated grids, on this
machine's activation range), exported once, timed against the PyTorch deployment on the sample,
and kept when faster and equal within the int8 tolerance.

:class:`OrtModel` keeps the PyTorch deployment it was measured against: its layers are the
model's children (parameter counts, sizes and state dicts are the PyTorch model's), a file is
written from it (recording the link and the input shape it was exported for), and it runs any
input the exported graph does not take: another shape, dtype or device, training mode, a
gradient, or forward hooks (counting MACs runs the layers). A file records the link, not the
graph: :func:`modelzip.load` exports again (a model of a few MB takes well under a second).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from modelzip.core.compact_source import ORT_ATTR
from modelzip.core.errors import ModelError
from modelzip.core.model_links import register_link

#: The eager (unlinked) model under the PyTorch deployment, as every model link keeps it.
EAGER_ATTR = "_modelzip_eager"
#: ``MODELZIP_DEPLOY_ONNXRUNTIME=0`` keeps deployments in PyTorch (no onnxruntime candidate).
ENV_SWITCH = "MODELZIP_DEPLOY_ONNXRUNTIME"
#: The largest input rank and dimension a file may record (it is untrusted).
_MAX_RANK, _MAX_DIM = 8, 1 << 20


def enabled() -> bool:
    """Whether deploy may offer onnxruntime: installed, and not switched off."""
    from modelzip.kernels.int8_ort import ort_available

    return os.environ.get(ENV_SWITCH, "1") != "0" and ort_available()


def input_spec(value: Any, where: str = "the model") -> tuple[int, ...]:
    """The recorded input shape (without the batch), checked: a list of 1 to 8 positive ints."""
    shape = value.get("input_shape") if isinstance(value, dict) else None
    ok = isinstance(shape, list) and 1 <= len(shape) <= _MAX_RANK
    ok = ok and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)  # type: ignore[union-attr]
    if not ok or not all(0 < d <= _MAX_DIM for d in shape):  # type: ignore[union-attr]
        raise ModelError(
            f"{where}: onnxruntime link {value!r} is invalid; expected "
            f"{{'input_shape': [1 to {_MAX_RANK} ints in 1..{_MAX_DIM}]}}"
        )
    return tuple(shape)  # type: ignore[arg-type]


def _eager(model: nn.Module) -> nn.Module:
    return model.__dict__.get(EAGER_ATTR, model)


def _notes(model: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in model.__dict__.items() if k.startswith("_modelzip_")}


class OrtModel(nn.Module):
    """A model run by an onnxruntime session on inputs of the exported shape, by ``torch_model``
    (its PyTorch deployment, whose layers are this module's children) on every other input."""

    def __init__(self, torch_model: nn.Module, data: bytes, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        for name, child in torch_model._modules.items():
            if child is not None:
                self.add_module(name, child)
        self.__dict__.update(_notes(torch_model))
        self.__dict__[EAGER_ATTR] = _eager(torch_model)
        self.__dict__["torch_model"] = torch_model  # not a child: its layers are ours already
        self.__dict__["onnx_bytes"] = data
        self.input_shape = tuple(input_shape)
        self._session: Any = None
        self._threads = 0
        self._layers = tuple(self.modules())  # checked for hooks on every call: listed once
        self.eval()

    def _build(self, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning pool threads would take the cores from PyTorch code around the model.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            self.onnx_bytes, options, providers=["CPUExecutionProvider"]
        )
        self._threads = threads

    def runs_graph(self, x: Any) -> bool:
        """Whether the session takes ``x`` (else the PyTorch deployment runs it)."""
        return (
            isinstance(x, torch.Tensor)
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and tuple(x.shape[1:]) == self.input_shape
            and x.shape[0] > 0
            and not self.training
            and not (x.requires_grad and torch.is_grad_enabled())
            and not _hooked(self._layers)
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs or len(args) != 1 or not self.runs_graph(args[0]):
            return self.torch_model(*args, **kwargs)
        threads = torch.get_num_threads()
        if threads != self._threads:
            self._build(threads)
        x = args[0].detach().contiguous().numpy()
        return torch.from_numpy(self._session.run(None, {"input": x})[0])

    def train(self, mode: bool = True) -> OrtModel:
        super().train(mode)
        self.torch_model.train(mode)
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> OrtModel:
        res = OrtModel(copy.deepcopy(self.torch_model, memo), self.onnx_bytes, self.input_shape)
        res.__dict__.update({k: copy.deepcopy(v, memo) for k, v in _notes(self).items()
                             if k != EAGER_ATTR})  # fmt: skip
        res.train(self.training)
        return res

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"], state["_threads"] = None, 0
        return state


def _hooked(layers: tuple[nn.Module, ...]) -> bool:
    """Whether a forward hook is on any layer (then the layers must run: counting, recording)."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in layers)


def export_graph(model: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX graph of ``model``'s compressed form (every deployed layer back to the layer it
    was built from, in its export form), traced on ``example`` with a symbolic batch."""
    from modelzip.deploy import trainable
    from modelzip.export.onnx import to_onnx_bytes

    compact = trainable(_eager(model)).eval()
    for p in compact.parameters():
        p.requires_grad_(False)
    return to_onnx_bytes(compact, example)


def link_onnxruntime(model: nn.Module) -> tuple[nn.Module, int, str]:
    """The model link: ``model`` (a PyTorch deployment whose eager model records
    :data:`ORT_ATTR`) run by onnxruntime; ``(model, 1, "")``, or ``(model, 0, why not)`` with
    the record dropped (a file saved from the model then records no link)."""
    if isinstance(model, OrtModel):
        return model, 0, "the model runs on onnxruntime already"
    eager = _eager(model)
    if ORT_ATTR not in eager.__dict__:
        return model, 0, "no input shape recorded for onnxruntime"
    record = eager.__dict__.pop(ORT_ATTR)
    shape = input_spec(record)
    linked, why = _linked(model, shape)
    if linked is not None:
        eager.__dict__[ORT_ATTR] = linked.__dict__[ORT_ATTR] = record
        return linked, 1, ""
    return model, 0, why


def _linked(model: nn.Module, shape: tuple[int, ...]) -> tuple[OrtModel | None, str]:
    """``model`` on an onnxruntime session for inputs of ``shape`` (its batch aside), or why not."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None, f"onnxruntime: not tried ({ENV_SWITCH}=0)"
    if not enabled():
        return None, "onnxruntime: not installed (pip install 'modelzip[export]')"
    try:
        data = export_graph(model, torch.zeros((1, *shape)))
    except ModelError as e:
        return None, f"onnxruntime: not exported ({e})"
    linked = OrtModel(model, data, shape)
    try:  # built now, so that a graph this onnxruntime cannot run fails here, not in a call
        linked._build(torch.get_num_threads())
    except Exception as e:  # onnxruntime raises its own types
        return None, f"onnxruntime: no session ({type(e).__name__}: {str(e)[:120]})"
    return linked, ""


def unlink_onnxruntime(model: nn.Module) -> nn.Module:
    """The eager model under an :class:`OrtModel` (notes set on it since carried over), with
    the record of the link dropped; ``model`` itself (record dropped) otherwise."""
    if isinstance(model, OrtModel):
        notes = _notes(model)
        eager = notes.pop(EAGER_ATTR)
        eager.__dict__.update(notes)
        model = eager
    model.__dict__.pop(ORT_ATTR, None)
    return model


register_link("onnxruntime", link_onnxruntime, unlink_onnxruntime)
