"""Which layers' weight tensors a model's code reads directly, found by running it once.

Some models do not call a layer but pass its tensor to a function: torchvision's Swin
Transformer computes attention with ``F.linear(x, self.qkv.weight, self.qkv.bias)``. A compressed
layer put in place of ``qkv`` would never be called, and the function would fail on its missing
``weight`` (or, worse, read a stale one). :func:`direct_weight_reads` runs the model on a sample
under a ``TorchFunctionMode`` that sees every tensor handed to a torch function, while hooks keep
the stack of modules being run: a layer's parameter used while that layer is not the innermost
module running is read directly, by the module that is. No tracer is needed, so it works for any
model that runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


class _Watch(TorchFunctionMode):
    def __init__(
        self, owner: dict[int, tuple[str, ...]], stack: list[str], reads: dict[str, str]
    ) -> None:
        super().__init__()
        self.owner, self.stack, self.reads = owner, stack, reads

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for a in tree_flatten((args, kwargs))[0]:
            names = self.owner.get(id(a), ()) if isinstance(a, torch.Tensor) else ()
            # A tied tensor (an output layer sharing its token embedding's weight) is read by a
            # layer of its own when any of its holders is the innermost module running.
            if names and (not self.stack or self.stack[-1] not in names):
                for name in names:
                    self.reads.setdefault(name, self.stack[-1] if self.stack else "")
        return func(*args, **kwargs)


def _pop(stack: list[str]) -> None:
    stack.pop()  # a forward hook's return value would replace the module's output


def direct_weight_reads(model: nn.Module, sample: Any) -> dict[str, str]:
    """``layer name -> name of the module whose code reads its parameters`` (see module doc).

    The model runs once in eval mode without gradients (its training flags are restored); a model
    that fails on the sample gives an empty map (the caller's own run reports that failure).
    """
    holders: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            holders.setdefault(id(p), []).append(name)
    owner = {k: tuple(v) for k, v in holders.items()}
    if not owner or sample is None:
        return {}
    stack: list[str] = []
    reads: dict[str, str] = {}
    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda *_, n=name: stack.append(n)))
        handles.append(m.register_forward_hook(lambda *_: _pop(stack)))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), _Watch(owner, stack, reads):
            model(sample)
    except Exception:
        return {}
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    types = dict(model.named_modules())
    return {
        layer: type(types[reader]).__name__ if reader in types else "the model's forward"
        for layer, reader in reads.items()
    }
