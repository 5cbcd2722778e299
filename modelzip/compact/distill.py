"""Knowledge distillation (Hinton, Vinyals & Dean, 2015): a student learns the teacher's outputs.

.. math::

    L = \\alpha \\, T^2 \\, \\mathrm{KL}\\big(\\sigma(z_t / T) \\,\\|\\, \\sigma(z_s / T)\\big)
        + (1 - \\alpha) \\, \\mathrm{CE}(z_s, y)

The ``T^2`` keeps the soft term's gradients on the scale of the hard term's as ``T`` grows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelzip.core.errors import ConfigError, DataError
from modelzip.core.running import model_device
from modelzip.data.dataset import Dataset
from modelzip.train import TrainConfig, TrainResult, train

__all__ = ["distill", "distillation_loss", "recalibrate_batchnorm"]


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, alpha: float
) -> Tensor:
    """Hinton's KD loss (module docstring); ``alpha=0`` is plain cross-entropy."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * t * t * soft + (1.0 - alpha) * hard


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, images: Tensor, batch_size: int = 256, batches: int = 20
) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``images``, in place.

    A replaced layer changes the activations its BatchNorm was calibrated for, so a compactified
    CNN can be at chance level until the statistics are measured again (as AdaBN, Li et al.
    2016, does across domains); weights are not touched. Uses ``batches`` batches at most.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    was_training = model.training
    device = model_device(model)
    try:
        model.train()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches seen
        for i in range(min(batches, max(len(images) // batch_size, 1))):
            model(images[i * batch_size : (i + 1) * batch_size].to(device))
    finally:
        for m, (momentum, _) in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    config: TrainConfig | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> TrainResult:
    """Train ``student`` in place on ``data`` to match ``teacher`` (frozen, in eval mode).

    Parameters
    ----------
    student, teacher : nn.Module
        Classifiers with the same outputs; the teacher is only run, never changed.
    data : Dataset
        Image classification data; trains on the training part of ``data.split(val_size)``.
    config : TrainConfig, optional
        Optimizer, schedule, epochs, augmentation, as for :func:`modelzip.train.train`, which
        runs the training with the distillation loss.
    temperature : float
        Softmax temperature ``T > 0`` of both models in the soft term.
    alpha : float
        Weight of the soft term in ``[0, 1]``.
    """
    config = config or TrainConfig()
    if not temperature > 0:
        raise ConfigError(f"distill: temperature={temperature!r} is out of range; allowed (0, inf)")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distill: alpha={alpha!r} is out of range; allowed [0, 1]")
    if not isinstance(data, Dataset):
        raise DataError(f"distill needs an image Dataset, got {type(data).__name__}")

    def loss(logits: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            target = teacher(images)
        return distillation_loss(logits, target, labels, temperature, alpha)

    teacher_was = teacher.training
    teacher.eval()
    try:
        return train(student, data, config, progress=False, loss_fn=loss)
    finally:
        teacher.train(teacher_was)
