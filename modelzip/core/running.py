"""Running a model for a look at it: its device, eval and inference mode, one hooked forward."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_inference(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model`` is in eval mode and autograd off (inference mode); afterwards
    its train/eval mode is what it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Within the block, CUDA convs and matmuls compute in full float32, not TF32 (on by default
    for cuDNN convs): a check that two models compute the same must not see TF32's 1e-3 error."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def run_hooked(
    model: nn.Module,
    sample: Any,
    hooks: list[tuple[nn.Module, Callable[..., Any]]],
    pre: bool = False,
) -> Any:
    """``model(sample)`` (a tuple: the arguments) once under :func:`eval_inference`, with
    ``hooks`` (``(module, hook)`` pairs; forward pre-hooks with ``pre``) on for that call only."""
    handles = [
        m.register_forward_pre_hook(h) if pre else m.register_forward_hook(h) for m, h in hooks
    ]
    try:
        with eval_inference(model):
            return model(*sample) if isinstance(sample, tuple) else model(sample)
    finally:
        for handle in handles:
            handle.remove()
