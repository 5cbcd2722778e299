"""Compress your own PyTorch model with a recipe, fine-tune it, save it and load it back.

    python examples/compress_my_model.py            # MNIST, a few epochs (about a minute)
    python examples/compress_my_model.py --quick    # scikit-learn digits, seconds

The model is an ordinary ``nn.Module`` defined below. modelzip records how to rebuild it
(``compress_my_model:make_model``), so the saved file loads anywhere this module is importable.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: kinder on shared CPUs

import torch
from torch import nn

import modelzip
from modelzip.data import load_dataset
from modelzip.models import model_factory, resolve_model
from modelzip.recipe import Recipe
from modelzip.train import TrainConfig, train

# The recipe: prune the convolutions' and hidden layer's weights to 70 % zeros (Han et al. 2015),
# keeping the small classifier dense; then fine-tune to recover the accuracy.
RECIPE = """
- {method: magnitude_prune, sparsity: 0.7, select: {exclude: ['head']}}
"""


class SmallCNN(nn.Module):
    """Two convolutions and two linear layers: a typical hand-written classifier."""

    def __init__(self, channels: int = 1, size: int = 28, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Linear(32 * (size // 4) ** 2, 128)
        self.head = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        return self.head(torch.relu(self.hidden(x)))


@model_factory  # a saved file may name this function without trust_remote_code at load
def make_model(channels: int = 1, size: int = 28, classes: int = 10) -> nn.Module:
    """The factory modelzip records, so that a saved file can rebuild the model."""
    return SmallCNN(channels, size, classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits: seconds, not minutes")
    parser.add_argument("--out", type=Path, help="where to save the .mzip (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1 if args.quick else torch.get_num_threads())

    data = load_dataset("digits" if args.quick else "mnist")
    channels, size, _ = data.input_shape
    torch.manual_seed(0)
    # resolve_model records the factory, so that a saved file can rebuild the model; it imports
    # this file, which is no installed package, hence the explicit trust in our own code.
    model = resolve_model(
        "compress_my_model:make_model",
        trust_remote_code=True,
        channels=channels,
        size=size,
        classes=data.num_classes,
    )
    config = TrainConfig(epochs=10 if args.quick else 2, lr=3e-3, optimizer="adam", val_size=0)
    train(model, data, config, progress=not args.quick)

    recipe = Recipe.from_list(__import__("yaml").safe_load(RECIPE))
    finetune = TrainConfig(epochs=4 if args.quick else 1, lr=1e-3, optimizer="adam", val_size=0)
    small, report = modelzip.compress(model, recipe, data, finetune=finetune, measure=False)

    print(f"accuracy  {report.before.accuracy:.4f} -> {report.after.accuracy:.4f}")
    print(f"bytes     {report.before.size_bytes:,} -> {report.after.size_bytes:,}")
    print(f"compression {report.compression:.2f}x")
    for change in report.layers:
        print(f"  {change.name}: {change.before} -> {change.after} ({change.compression:.1f}x)")

    out = args.out or Path(tempfile.mkdtemp()) / "my_model.mzip"
    modelzip.save(small, out)
    again = modelzip.load(out)
    x = data.x_test[:32]
    with torch.no_grad():
        same = torch.equal(small.eval()(x), again.eval()(x))
    print(f"saved {out} ({out.stat().st_size:,} bytes); reloaded outputs identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
