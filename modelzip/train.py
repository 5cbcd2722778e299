"""Training and evaluation of image classifiers and character language models, on any device.

>>> from modelzip.data import load_dataset
>>> from modelzip.models import create
>>> from modelzip.train import default_train_config, evaluate, train
>>> mnist, model = load_dataset("mnist"), create("lenet300")
>>> result = train(model, mnist, default_train_config("lenet300"))
>>> evaluate(model, mnist)["accuracy"]

Data stay in memory and batches are cut by indexing (no DataLoader workers); the learning rate is
set per optimizer step from the schedule. Runs are deterministic on CPU for a given seed and thread
count. Callbacks run after every optimizer step (gradual pruning hooks in there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelzip.core.errors import ConfigError, DataError, ModelError, unknown_name
from modelzip.core.frozen import ConfigBase, check_range
from modelzip.core.running import eval_inference, model_device
from modelzip.data.dataset import Dataset
from modelzip.data.folder import LazyImages, as_tensor
from modelzip.data.text import TextCorpus, sequence_windows
from modelzip.models.shapes import sequence_length
from modelzip.train_checkpoint import load_training_state, save_training_state

__all__ = [
    "Callback",
    "EpochRecord",
    "TrainConfig",
    "TrainResult",
    "check_finite",
    "classify",
    "count_steps",
    "default_train_config",
    "evaluate",
    "lr_factor",
    "random_shift",
    "train",
]

#: Called as ``callback(model, step, epoch)`` after each optimizer step; ``step`` counts the steps
#: taken so far (1 after the first), ``epoch`` is the index of the running epoch (from 0).
Callback = Callable[[nn.Module, int, int], Any]
#: ``loss_fn(logits, inputs, targets)``: a batch's loss (see :func:`train`).
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
Data = Dataset | TextCorpus
Schedule = Literal["cosine", "step", "constant", "onecycle"]
GradCompress = Literal["terngrad", "qsgd", "onebit", "dgc"]


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """How to train: optimizer, schedule, augmentation and run settings.

    ``val_size`` (a count, or a fraction when below 1) is held out of an image training set for
    validation, always with the same split so runs with different seeds compare on the same
    images; a count is capped at a tenth of the training set, so that the default (5000, for
    MNIST) also works on small data sets; ``0`` trains on the whole set. ``seq_len`` and
    ``steps_per_epoch`` matter mostly for language models, whose "epoch" over millions of
    characters is otherwise long.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"
    #: Random shifts of up to 2 pixels (zero padding, then a random crop), per image.
    augment: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    val_size: int | float = 5000
    #: Train conv nets in channels-last memory format (faster convolutions on CPU).
    channels_last: bool = True
    #: CPU threads while training; None keeps torch's setting.
    threads: int | None = None
    #: Clip the gradients' global L2 norm to this value (None: no clipping).
    grad_clip: float | None = None
    seq_len: int = 128
    steps_per_epoch: int | None = None
    #: Average the gradients through a compressing DDP communication hook (TernGrad, QSGD, 1-bit
    #: SGD with error feedback, or DGC's top-k): :mod:`modelzip.quantize.grad_compress`. One
    #: process trains in a one-process group; under ``torchrun`` the processes share each batch.
    grad_compress: GradCompress | None = None
    #: QSGD's bits per gradient value (``2^(bits-1) - 1`` levels per sign).
    grad_bits: int = 4
    #: DGC's fraction of each gradient bucket sent per step.
    dgc_ratio: float = 0.01

    def validate(self) -> None:
        check_range(self, "epochs", 1)
        check_range(self, "batch_size", 1)
        check_range(self, "lr", 0.0, low_open=True)
        check_range(self, "momentum", 0.0, 1.0, high_open=True)
        check_range(self, "weight_decay", 0.0)
        check_range(self, "label_smoothing", 0.0, 1.0, high_open=True)
        check_range(self, "seed", 0)
        check_range(self, "val_size", 0.0)
        check_range(self, "threads", 1)
        check_range(self, "grad_clip", 0.0, low_open=True)
        check_range(self, "seq_len", 1)
        check_range(self, "steps_per_epoch", 1)
        check_range(self, "grad_bits", 2, 8)
        check_range(self, "dgc_ratio", 0.0, 1.0, low_open=True)


_DEFAULTS: dict[str, TrainConfig] = {
    "lenet300": TrainConfig(
        epochs=20, batch_size=128, lr=0.1, weight_decay=1e-4, augment=True, schedule="cosine"
    ),
    "lenet5": TrainConfig(
        epochs=15, batch_size=128, lr=0.05, weight_decay=5e-4, augment=True, schedule="cosine"
    ),
    # The wide LeNet-5 for XNOR-Net (2.3x LeNet-5's MACs): 4 epochs keep it a few minutes on
    # 2 cores.
    "lenet5_wide": TrainConfig(
        epochs=4, batch_size=128, lr=0.05, weight_decay=5e-4, augment=True, schedule="onecycle"
    ),
    # Label smoothing 0.1 took both BN nets from ~0.6-0.75% to ~0.55% test error (2-3 seeds each).
    "vgg_small": TrainConfig(
        epochs=3, batch_size=128, lr=0.1, schedule="onecycle", label_smoothing=0.1
    ),
    "resnet_small": TrainConfig(
        epochs=4, batch_size=128, lr=0.1, schedule="onecycle", label_smoothing=0.1
    ),
    # 1,000 steps of 32 x 64 characters: validation perplexity ~5.5 on a GPU; batches of
    # 64 x 128 reach ~5.3 in 800 steps but cost 4x the CPU time per step.
    "char_lstm": TrainConfig(
        epochs=5,
        batch_size=32,
        lr=4e-3,
        optimizer="adam",
        weight_decay=0.0,
        grad_clip=1.0,
        seq_len=64,
        steps_per_epoch=200,
        channels_last=False,
    ),
}


def default_train_config(model_name: str) -> TrainConfig:
    """The training config of a zoo model.

    The models of ``benchmarks/baselines.py`` have tuned configs (BENCHMARKS.md shows what they
    reach); other zoo models get a generic one for their data set: 5 epochs of SGD with a
    one-cycle schedule for images, the char_lstm settings for text.
    """
    from modelzip.models import list_models, model_info

    if model_name in _DEFAULTS:
        return _DEFAULTS[model_name]
    if model_name not in list_models():
        raise unknown_name("model", model_name, list_models())
    if model_info(model_name).dataset == "shakespeare":
        return _DEFAULTS["char_lstm"]
    return TrainConfig(epochs=5, batch_size=128, lr=0.05, schedule="onecycle")


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """What one epoch did; the ``val_*`` fields are None without validation data."""

    epoch: int
    train_loss: float
    lr: float
    seconds: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_perplexity: float | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Per-epoch history, total wall time and number of optimizer steps of a training run."""

    history: tuple[EpochRecord, ...]
    seconds: float
    steps: int
    #: With ``grad_compress``: the scheme, rank, group size, hook calls and bytes per step
    #: (:meth:`modelzip.quantize.grad_compress.GradCompression.report`).
    grad_compression: dict[str, Any] | None = None

    @property
    def final(self) -> EpochRecord:
        """The last epoch's record."""
        return self.history[-1]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "history": [dataclasses.asdict(r) for r in self.history],
            "seconds": self.seconds,
            "steps": self.steps,
            "grad_compression": self.grad_compression,
        }


def lr_factor(schedule: Schedule, step: int, total: int) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based) of ``total``.

    ``cosine``: :math:`(1 + \\cos(\\pi t)) / 2` with :math:`t` = step / total (Loshchilov & Hutter,
    SGDR, 2017). ``step``: x0.1 at 50% and again at 75% of training. ``onecycle`` (Smith &
    Topin, 2019): linear warm-up from 1/25 over the first 30%, then cosine down to 1/2500.
    """
    t = min(max(step / max(total, 1), 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    if schedule == "onecycle":
        warm, start, end = 0.3, 1 / 25, 1 / 2500
        if t < warm:
            return start + (1.0 - start) * t / warm
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * (t - warm) / (1.0 - warm)))
    raise ValueError(f"unknown schedule {schedule!r}")


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image of ``x`` (N x C x H x W) by up to ``max_shift`` pixels each way, zero fill.

    Zero padding by ``max_shift`` then a random crop back to H x W, as one gather.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1), generator=generator).to(x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # indexing puts C last


def check_finite(model: nn.Module, action: str = "use") -> None:
    """Refuse a model with NaN or Inf in a parameter or floating-point buffer (ModelError)."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = "NaN" if torch.isnan(t).any() else "Inf"
                raise ModelError(f"{kind} {name!r} contains {bad}; refusing to {action} it")


def _has_conv(model: nn.Module) -> bool:
    return any(p.dim() == 4 for p in model.parameters())


def channels_last_crash(model: nn.Module) -> str | None:
    """The first conv whose channels-last backward crashes PyTorch's CPU oneDNN path, or None.

    A 1x1 conv of stride > 1 on fewer than 8 input channels corrupts the heap in its
    channels-last backward (torch 2.13, CPU, reproduced on AVX2 for 1 to 7 input channels; 8
    and more pass). A Tucker-decomposed or channel-pruned ResNet shortcut is such a conv, so
    those models train contiguous.
    """
    for name, m in model.named_modules():
        if (
            isinstance(m, nn.Conv2d)
            and m.weight.device.type == "cpu"
            and tuple(m.kernel_size) == (1, 1)
            and max(m.stride) > 1
            and m.in_channels < 8
        ):
            return name
    return None


def classify(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int, channels_last: bool = False
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)``, in eval and inference mode."""
    device, loss_sum, correct = model_device(model), 0.0, 0
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(x, LazyImages):  # decoded batch by batch: keep a batch's memory small
        batch_size = min(batch_size, 64)
    with eval_inference(model):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device).contiguous(memory_format=fmt)
            yb = y[start : start + batch_size].to(device)
            logits = model(xb).float()
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return {"accuracy": correct / len(x), "loss": loss_sum / len(x)}


def _language(model: nn.Module, stream: Tensor, seq_len: int, batch_size: int) -> dict[str, float]:
    device, loss_sum, correct, count = model_device(model), 0.0, 0, 0
    windows = sequence_windows(stream, seq_len)
    with eval_inference(model):
        for start in range(0, len(windows), batch_size):
            rows = windows[start : start + batch_size].to(device)
            logits = model(rows[:, :-1]).float().flatten(0, 1)
            targets = rows[:, 1:].flatten()
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(1) == targets).sum())
            count += len(targets)
    loss = loss_sum / count
    return {"perplexity": math.exp(loss), "loss": loss, "accuracy": correct / count}


def evaluate(
    model: nn.Module,
    data: Data,
    split: str | tuple[Tensor, Tensor] | Tensor = "test",
    batch_size: int | None = None,
    *,
    seq_len: int = 128,
) -> dict[str, float]:
    """Accuracy and loss of ``model`` on a split of ``data``, in eval mode and inference mode.

    Parameters
    ----------
    model : nn.Module
        Evaluated on its own device; its train/eval mode is restored afterwards.
    data : Dataset or TextCorpus
    split : str or tensors
        ``'test'``, ``'train'`` or ``'val'`` (the validation images that :func:`train` holds out
        with the default ``val_size``), or explicit ``(x, y)`` tensors (for a TextCorpus, a token
        stream).
    batch_size : int, optional
        Images per batch (default 1000), or sequences of ``seq_len`` characters (default 64).

    Returns
    -------
    dict
        ``accuracy`` (fraction in [0, 1]) and ``loss`` (mean cross-entropy, nats); for a
        TextCorpus also ``perplexity`` (exp of the loss), accuracy being next-character accuracy.
    """
    check_finite(model, "evaluate")
    if isinstance(data, TextCorpus):
        stream = split if isinstance(split, Tensor) else data.stream(split)  # type: ignore[arg-type]
        return _language(model, stream, sequence_length(model, seq_len), batch_size or 64)
    if not isinstance(data, Dataset):
        raise DataError(
            f"cannot evaluate on a {type(data).__name__}; expected Dataset or TextCorpus"
        )
    if isinstance(split, tuple):
        x, y = split
    elif split == "test":
        x, y = data.x_test, data.y_test
    elif split == "train":
        x, y = data.x_train, data.y_train
    elif split == "val":
        x, y = train_val_split(data, TrainConfig.val_size)[1]
    else:
        raise DataError(f"split={split!r} is not one of 'train', 'val', 'test'")
    if len(x) == 0:
        raise DataError(f"the {split!r} split of {data.name} is empty")
    return classify(model, x, y, batch_size or 1000, _is_channels_last(model))


def _is_channels_last(model: nn.Module) -> bool:
    # A weight with one input channel is contiguous in both formats, so look at all of them.
    return any(
        p.dim() == 4
        and not p.is_contiguous()
        and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )


def _train_parts(
    data: Data, config: TrainConfig, val: Any
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None]:
    """(training tensors, validation tensors or None): (x, y) for images, (windows,) for text."""
    if isinstance(data, TextCorpus):
        stream = data.val if val is None else val
        windows = sequence_windows(data.train, config.seq_len)
        return (windows,), ((stream,) if len(stream) > 1 else None)
    if not isinstance(data, Dataset):
        raise DataError(f"cannot train on a {type(data).__name__}; expected Dataset or TextCorpus")
    if val is not None:
        return (data.x_train, data.y_train), tuple(val)
    (x, y), (xv, yv) = train_val_split(data, config.val_size)
    return (x, y), ((xv, yv) if len(xv) else None)


def train_val_split(data: Dataset, val_size: int | float) -> tuple[tuple[Tensor, Tensor], ...]:
    """The training/validation split of :class:`TrainConfig`: seed 0, counts capped at 10%."""
    if isinstance(val_size, int):
        val_size = min(val_size, len(data.x_train) // 10)
    return data.split(val_size, seed=0)


def steps_per_epoch(n: int, config: TrainConfig) -> int:
    """Optimizer steps per epoch over ``n`` training samples."""
    # Whole batches only (a last batch of one image breaks BatchNorm), unless there is just one.
    steps = max(n // config.batch_size, 1)
    return min(steps, config.steps_per_epoch or steps)


def count_steps(data: Data, config: TrainConfig, val: Any = None) -> int:
    """Optimizer steps that :func:`train` will take (for schedules in callbacks, e.g. pruning)."""
    parts, _ = _train_parts(data, config, val)
    return config.epochs * steps_per_epoch(len(parts[0]), config)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config``'s optimizer over ``model``'s trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    lr: float,
    grad_clip: float,
    params: Iterable[Tensor],
) -> None:
    """One update of ``optimizer`` at learning rate ``lr`` from ``loss``'s gradients, their norm
    over ``params`` clipped to ``grad_clip`` (0: not clipped)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def train(
    model: nn.Module,
    data: Data,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    val: tuple[Tensor, Tensor] | Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` and return the per-epoch history.

    Parameters
    ----------
    model : nn.Module
        Trained on the device it is on; left in its previous train/eval mode.
    data : Dataset or TextCorpus
        A Dataset trains a classifier (cross-entropy) on the training part of
        ``data.split(config.val_size)`` and validates on the rest; a TextCorpus trains a
        next-character model on ``data.train`` and validates on ``data.val``.
    config : TrainConfig, optional
        Defaults to ``TrainConfig()``; see :func:`default_train_config` for the zoo's.
    progress : bool
        Show a progress bar (epoch, loss, time left) and a line per epoch on stderr.
    callbacks : sequence of callables
        ``cb(model, step, epoch)`` after each optimizer step (see :data:`Callback`).
    val : (x, y) tensors or a token stream, optional
        Explicit validation data; the whole training set is then used for training.
    checkpoint_dir : str or Path, optional
        Save model, optimizer, step, history and RNG states there after every epoch, atomically
        (:mod:`modelzip.train_checkpoint`; no pickle).
    resume : bool
        With ``checkpoint_dir``, continue from its last checkpoint: an interrupted run, rerun
        with the same arguments, ends with the same weights as an uninterrupted one (on the
        same device and thread count). The callbacks' own state is not saved.
    loss_fn : callable, optional
        ``loss_fn(logits, inputs, targets)`` of a batch instead of the cross-entropy (the
        distillation loss, :func:`modelzip.compact.distill`).
    """
    config = config or TrainConfig()
    if isinstance(data, TextCorpus) and sequence_length(model, config.seq_len) < config.seq_len:
        # A transformer takes at most its position table's length per sequence.
        config = dataclasses.replace(config, seq_len=sequence_length(model, config.seq_len))
    check_finite(model, "train")
    parts, val_parts = _train_parts(data, config, val)
    text = isinstance(data, TextCorpus)
    n = len(parts[0])
    if n == 0:
        raise DataError("the training set is empty")
    per_epoch = steps_per_epoch(n, config)
    total = config.epochs * per_epoch
    device = model_device(model)
    parts = tuple(t if isinstance(t, LazyImages) else t.to(device) for t in parts)
    channels_last = config.channels_last and _has_conv(model) and not text
    if channels_last and (unsafe := channels_last_crash(model)) is not None:
        warnings.warn(
            f"training contiguous, not channels-last: the channels-last backward of {unsafe!r} "
            "(1x1, strided, fewer than 8 input channels) crashes PyTorch's CPU oneDNN",
            stacklevel=2,
        )
        channels_last = False
    was_channels_last, was_training = _is_channels_last(model), model.training
    if channels_last:
        model.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    optimizer = make_optimizer(model, config)
    gen = torch.Generator().manual_seed(config.seed)
    old_threads = torch.get_num_threads()
    rng_devices = [device] if device.type == "cuda" else []
    history: list[EpochRecord] = []
    step, start = 0, time.perf_counter()
    bar = _Bar(total, config.epochs) if progress else None
    net, compression, ddp_stack = model, None, contextlib.ExitStack()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.grad_compress is not None:
            net, compression = ddp_stack.enter_context(_compressed_ddp(model, config))
        with torch.random.fork_rng(devices=rng_devices), bar or contextlib.nullcontext():
            torch.manual_seed(config.seed)  # dropout and any other draw from the global RNG
            first_epoch = 0
            if checkpoint_dir is not None and resume:
                state = load_training_state(
                    Path(checkpoint_dir), model=model, optimizer=optimizer, generator=gen,
                    config=config.to_dict(),
                )  # fmt: skip
                if state is not None:
                    first_epoch, step = state.epoch, state.step
                    history = [EpochRecord(**r) for r in state.history]
            for epoch in range(first_epoch, config.epochs):
                model.train()
                t0, loss_sum = time.perf_counter(), torch.zeros((), device=device)
                order = torch.randperm(n, generator=gen)
                for i in range(per_epoch):
                    idx = order[i * config.batch_size : (i + 1) * config.batch_size].to(device)
                    if text:
                        rows = parts[0][idx]
                        inputs, targets = rows[:, :-1], rows[:, 1:]
                    else:
                        inputs, targets = as_tensor(parts[0][idx]).to(device), parts[1][idx]
                        if config.augment:
                            inputs = random_shift(inputs, 2, gen)
                        inputs = inputs.contiguous(memory_format=fmt)
                    if compression is not None:
                        inputs, targets = _shard(compression, inputs, targets)
                    logits = net(inputs)
                    if loss_fn is not None:
                        loss = loss_fn(logits, inputs, targets)
                    elif text:
                        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
                    else:
                        smoothing = config.label_smoothing
                        loss = F.cross_entropy(logits, targets, label_smoothing=smoothing)
                    lr = config.lr * lr_factor(config.schedule, step, total)
                    optimizer_step(optimizer, loss, lr, config.grad_clip, model.parameters())
                    step += 1
                    for cb in callbacks:
                        cb(model, step, epoch)
                    loss_sum += loss.detach()
                    if bar is not None and (i % 20 == 19 or i == per_epoch - 1):
                        bar.update(step, epoch, float(loss_sum) / (i + 1))
                train_loss = float(loss_sum) / per_epoch
                if not math.isfinite(train_loss):
                    raise ModelError(
                        f"training diverged in epoch {epoch + 1} (loss {train_loss}); "
                        f"lower the learning rate (lr={config.lr:g})"
                    )
                record = _epoch_record(model, epoch, train_loss, lr, t0, val_parts, config, fmt)
                history.append(record)
                if checkpoint_dir is not None:
                    save_training_state(
                        Path(checkpoint_dir), model=model, optimizer=optimizer, generator=gen,
                        epoch=epoch + 1, step=step, config=config.to_dict(),
                        history=[dataclasses.asdict(r) for r in history],
                    )  # fmt: skip
                if bar is not None:
                    bar.log(record)
    finally:
        ddp_stack.close()
        torch.set_num_threads(old_threads)
        if channels_last and not was_channels_last:
            # Hand back the layout the caller had: code that views weights expects contiguous.
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    report = None if compression is None else compression.report(step)
    return TrainResult(tuple(history), time.perf_counter() - start, step, report)


def _compressed_ddp(model: nn.Module, config: TrainConfig) -> Any:
    """The DDP wrapper with ``config``'s gradient compression hook (a context manager)."""
    # By name: the hooks live in the quantize and prune families, which sit above the training
    # loop in the package's layers.
    module = importlib.import_module("modelzip.quantize.grad_compress")
    return module.compressed_ddp(
        model, config.grad_compress, bits=config.grad_bits, ratio=config.dgc_ratio,
        seed=config.seed,
    )  # fmt: skip


def _shard(compression: Any, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """This process's share of a batch: every ``world``-th sample from its rank. All processes
    cut the same batch (and draw the same augmentation), so their generators stay in step."""
    world, rank = compression.world_size, compression.rank
    if world == 1:
        return inputs, targets
    if len(inputs) < world:
        raise ConfigError(
            f"a batch of {len(inputs)} cannot be shared by {world} processes; "
            f"raise TrainConfig.batch_size to at least {world}"
        )
    return inputs[rank::world], targets[rank::world]


def _epoch_record(
    model: nn.Module,
    epoch: int,
    train_loss: float,
    lr: float,
    t0: float,
    val_parts: tuple[Tensor, ...] | None,
    config: TrainConfig,
    fmt: torch.memory_format,
) -> EpochRecord:
    metrics: dict[str, float] = {}
    if val_parts is not None and len(val_parts) == 1:
        metrics = _language(model, val_parts[0], config.seq_len, 64)
    elif val_parts is not None:
        metrics = classify(model, *val_parts, 1000, fmt == torch.channels_last)
    return EpochRecord(
        epoch=epoch + 1,
        train_loss=train_loss,
        lr=lr,
        seconds=time.perf_counter() - t0,
        val_loss=metrics.get("loss"),
        val_accuracy=metrics.get("accuracy"),
        val_perplexity=metrics.get("perplexity"),
    )


class _Bar:
    """A rich progress bar over all steps, on stderr so that stdout stays clean for results."""

    def __init__(self, total: int, epochs: int) -> None:
        from rich import progress as rp
        from rich.console import Console

        self.epochs = epochs
        self.progress = rp.Progress(
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TextColumn("loss {task.fields[loss]}"),
            rp.TimeElapsedColumn(),
            rp.TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task(f"epoch 1/{epochs}", total=total, loss="-")

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, epoch: int, loss: float) -> None:
        self.progress.update(
            self.task,
            completed=step,
            description=f"epoch {epoch + 1}/{self.epochs}",
            loss=f"{loss:.4f}",
        )

    def log(self, r: EpochRecord) -> None:
        val = ""
        if r.val_perplexity is not None:
            val = f"  val perplexity {r.val_perplexity:.3f}"
        elif r.val_accuracy is not None:
            val = f"  val accuracy {100 * r.val_accuracy:.2f}%"
        line = f"epoch {r.epoch}/{self.epochs}  loss {r.train_loss:.4f}{val}  lr {r.lr:.3g}"
        self.progress.console.print(f"{line}  {r.seconds:.1f}s")
