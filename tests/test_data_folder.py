"""Folders of class subfolders as data sets: decoding, resizing, center crop, normalization,
splits, streaming, bad folders; calibration and fine-tuning on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import modelzip
from modelzip.core.errors import DataError
from modelzip.data import load_dataset
from modelzip.data.folder import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, LazyImages


def _save(path: Path, array: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.to(torch.uint8).numpy()).save(path)


def _folder(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    for c in range(classes):
        for i in range(per_class):
            _save(root / f"k{c}" / f"{i:02d}.png", torch.full((30, 40, 3), 40 * c + i))
    return root


def test_a_folder_of_class_subfolders_is_a_dataset(tmp_path):
    data = load_dataset(_folder(tmp_path / "d"), image_size=16)
    assert data.classes == ("k0", "k1", "k2") and data.num_classes == 3
    assert len(data.x_train) == 27 and len(data.x_test) == 3  # 10 % of each class held out
    assert data.input_shape == (3, 16, 16)
    assert sorted(data.y_test.tolist()) == [0, 1, 2]
    x = data.x_train[:4].load()
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    # A flat grey image of value v normalises to (v/255 - mean) / std per channel.
    v = 40 * int(data.y_train[0]) + 1  # the first training image of k0 is 01.png (00 held out)
    want = (v / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0].mean((1, 2)), want, atol=1e-5)


def test_center_crop_is_deterministic_and_keeps_the_center(tmp_path):
    img = torch.zeros(40, 80, 3)
    img[:, 30:50] = 255  # a white band in the middle, 20 of 80 columns
    _save(tmp_path / "a.png", img)
    t = ImageTransform(32, mean=(0, 0, 0), std=(1, 1, 1))
    x = t(tmp_path / "a.png")
    assert x.shape == (3, 32, 32)
    assert torch.equal(x, t(tmp_path / "a.png"))
    # Shorter side 40 -> round(32 / 0.875) = 37; width 74; the crop keeps columns 21..52, where
    # the band (columns 27.75..46.25) lies in the middle.
    row = x[0, 16]
    assert row[12:20].min() > 0.9 and row[:3].max() < 0.1 and row[-3:].max() < 0.1


def test_train_and_val_subfolders_are_the_split(tmp_path):
    _folder(tmp_path / "d" / "train", classes=2, per_class=4)
    _folder(tmp_path / "d" / "val", classes=2, per_class=2)
    data = load_dataset(tmp_path / "d", image_size=8)
    assert (len(data.x_train), len(data.x_test)) == (8, 4)


def test_images_are_decoded_only_when_a_batch_asks(tmp_path, monkeypatch):
    data = load_dataset(_folder(tmp_path / "d"), image_size=8)
    calls = []
    real = ImageTransform.__call__

    def counting(self: ImageTransform, path: Path) -> torch.Tensor:
        calls.append(path)
        return real(self, path)

    monkeypatch.setattr(ImageTransform, "__call__", counting)
    (xtr, _), (xval, _) = data.split(5)
    sub = data.x_train[torch.tensor([3, 1])]
    assert isinstance(xtr, LazyImages) and isinstance(sub, LazyImages) and calls == []
    assert len(xtr) + len(xval) == 27
    assert sub.to("cpu").shape == (2, 3, 8, 8) and len(calls) == 2


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda r: _folder(r, classes=1), "at least two class"),
        (lambda r: (_folder(r, classes=2), (r / "empty").mkdir()), "holds no images"),
        (lambda r: (_folder(r / "train", 2), _folder(r / "val", 3)), "classes of train"),
    ],
)
def test_bad_folders_are_refused(tmp_path, make, match):
    make(tmp_path / "d")
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / "d")


def test_bad_image_and_sizes_are_refused(tmp_path):
    root = _folder(tmp_path / "d", classes=2, per_class=2)
    with pytest.raises(DataError, match="image_size"):
        load_dataset(root, image_size=2)
    with pytest.raises(DataError, match="folder of images"):
        load_dataset("digits", image_size=32)
    (root / "k0" / "00.png").write_bytes(b"not a png")
    data = load_dataset(root, image_size=8)
    with pytest.raises(DataError, match="cannot decode"):
        data.x_test.load()  # each class's first image (00.png) is held out for testing


def test_calibration_and_fine_tuning_run_on_a_folder(tmp_path):
    data = load_dataset(_folder(tmp_path / "d", per_class=12), image_size=16)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    from modelzip.quantize import Int8Config
    from modelzip.train import TrainConfig

    small, report = modelzip.compress(
        model,
        [Int8Config(activations="static", calibration_size=16)],
        data,
        finetune=TrainConfig(epochs=1, batch_size=8, lr=1e-3),
        measure=False,
    )
    assert report.after.accuracy is not None and 0.0 <= report.after.accuracy <= 1.0
    assert report.finetune_epochs == 1
    assert small(data.x_test.load()).shape == (len(data.x_test), 3)
