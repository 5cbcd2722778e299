"""A deployed layer remembers the compact layer it was built from.

:func:`~modelzip.deploy.materialize` may find that the fastest form of a compressed
layer stores more than the layer did: a 90%-pruned layer whose dense product is faster than its
sparse one, a TT layer cut into two GEMMs. Saving that form would make the file larger than the
compressed model's; saving the compressed layer would make the loaded model slow again. So the
deployed layer keeps the compressed layer's stored form (its class, spec and packed tensors, no
more bytes than the file holds) and which executable form was chosen: :func:`modelzip.save`
writes the compact form with that choice, :func:`modelzip.load` builds the same executable form
again (:func:`modelzip.core.forms.build_form`), the size counts of :mod:`.counting` count the
compact bytes and numbers (the ones the file holds), ONNX export writes the compact layer, and
:func:`modelzip.deploy.trainable` (which ``compress`` calls first) turns the layer back into
the compressed one, so a deployed model can take more recipe steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from modelzip.core.module import CompressedModule, layer_class, layer_key

SOURCE_ATTR = "_modelzip_compact_source"
#: Set on a deployed model whose measured fastest memory layout is channels-last; saved with it
#: and applied again on load (a file stores contiguous tensors).
LAYOUT_ATTR = "_modelzip_layout"
#: Set on a deployed model (inference-only: parameters frozen, layers in executable forms).
DEPLOYED_ATTR = "_modelzip_deployed"
#: Set on a deployed model whose static int8 layers hand each other uint8 tensors
#: (:mod:`modelzip.quantize.int8_chain`); saved with it, linked again on load.
CHAIN_ATTR = "_modelzip_int8_chain"
#: Set on a deployed model whose runs of sparse linears run as one call
#: (:mod:`modelzip.kernels.sparse_chain`); saved with it, linked again on load.
SPARSE_CHAIN_ATTR = "_modelzip_sparse_chain"
#: Set on a deployed model whose XNOR convolutions read the max pool and hardtanh before them
#: (:mod:`modelzip.kernels.xnor_inputs`); saved with it, linked again on load.
XNOR_INPUTS_ATTR = "_modelzip_xnor_inputs"
#: Set on a deployed model whose ReLUs run in the native dynamic int8 linears before them
#: (:mod:`modelzip.kernels.int8_dynamic_runs`); saved with it, linked again on load.
INT8_RUNS_ATTR = "_modelzip_int8_runs"
#: Set on the eager model of a deployment run whole by onnxruntime
#: (:mod:`modelzip.export.ort_link`): ``{"input_shape": [...]}``, the input's shape without the
#: batch that the graph is exported for; saved with it, exported and linked again on load.
ORT_ATTR = "_modelzip_onnxruntime"


@dataclasses.dataclass
class CompactSource:
    """The compressed layer a deployed layer was built from, and the form (kind) it became."""

    key: str
    spec: dict[str, Any]
    state: dict[str, torch.Tensor]
    kind: str
    params: int

    def layer(self) -> CompressedModule:
        """The compressed layer, rebuilt (eval mode)."""
        layer = layer_class(self.key).from_spec(self.spec)
        layer.load_packed_state(self.state)
        return layer.eval()

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


def remember_source(new: nn.Module, old: nn.Module, kind: str) -> None:
    """Attach ``old``'s compact form (when it is a compressed layer) to its deployed form
    ``new``, with the executable form's ``kind``."""
    if not isinstance(old, CompressedModule):
        return
    # A tensor the deployed layer holds unchanged under the same name (an int8 layer's codes on
    # its engine) is shared, not copied: the deployed model would otherwise hold it twice.
    own = new.state_dict(keep_vars=True)
    state = {}
    for k, v in old.packed_state().items():
        twin = own.get(k)
        same = (
            twin is not None
            and twin.shape == v.shape
            and twin.dtype == v.dtype
            and twin.device == v.device
            and torch.equal(twin, v)
        )
        state[k] = twin.detach() if same else v.detach().clone()  # type: ignore[union-attr]
    # A plain attribute, not a submodule or buffer: it must not change the deployed layer's
    # state dict, parameters or outputs.
    new.__dict__[SOURCE_ATTR] = CompactSource(
        layer_key(type(old)), old.spec(), state, kind, old.param_count()
    )


def compact_source(module: nn.Module) -> CompactSource | None:
    """The compact form a deployed layer was built from, if it keeps one."""
    return module.__dict__.get(SOURCE_ATTR)
