"""Image classification data from a folder of class subfolders, decoded batch by batch.

::

    DIR/cat/0001.jpg, DIR/cat/0002.png, DIR/dog/..., ...      (split 90/10 per class, by name)
    DIR/train/cat/..., DIR/val/cat/... (or DIR/test/...)      (the folder's own split)

Classes are the subfolder names, sorted. Every image is decoded with Pillow when a batch asks for
it (nothing is held in memory but the file list), converted to RGB, resized so that its shorter
side is ``image_size / 0.875`` (bilinear), center-cropped to ``image_size`` (the deterministic
evaluation transform of the ImageNet recipes) and normalized with ``(x - mean) / std`` per channel
(ImageNet's statistics by default).

:class:`LazyImages` stands where an in-memory :class:`modelzip.data.Dataset` holds a tensor:
``len``, ``shape``, and indexing with a slice or an index tensor give another lazy view; an integer
index, :meth:`LazyImages.load`, ``.to(...)`` and ``.contiguous()`` give the decoded float tensor.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modelzip.core.errors import DataError
from modelzip.data.dataset import Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"})
#: The most pixels one decoded image may have (a decompression bomb is refused, not decoded).
MAX_PIXELS = 64_000_000
#: Fraction of each class held out for testing when the folder has no split of its own.
TEST_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side, center-crop, scale to [0, 1], normalize."""

    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 8 <= self.image_size <= 4096:
            raise DataError(f"image_size={self.image_size} must be in [8, 4096]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DataError(
                f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}"
            )

    def __call__(self, path: Path) -> Tensor:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                short = round(self.image_size / 0.875)
                scale = short / min(w, h)
                size = (
                    max(self.image_size, round(w * scale)),
                    max(self.image_size, round(h * scale)),
                )
                im = im.resize(size, Image.BILINEAR)
                left = (size[0] - self.image_size) // 2
                top = (size[1] - self.image_size) // 2
                im = im.crop((left, top, left + self.image_size, top + self.image_size))
                data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot decode image {path}: {e}") from None
        x = data.reshape(self.image_size, self.image_size, 3).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


class LazyImages:
    """Images of a folder, decoded when indexed (see the module docstring)."""

    dtype = torch.float32
    ndim = 4

    def __init__(self, paths: tuple[Path, ...], transform: ImageTransform, index: Tensor) -> None:
        self.paths, self.transform, self.index = paths, transform, index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        n = self.transform.image_size
        return torch.Size((len(self.index), 3, n, n))

    def dim(self) -> int:
        return 4

    def numel(self) -> int:
        return self.shape.numel()

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images, {tuple(self.shape[1:])})"

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return self.transform(self.paths[int(self.index[key])])
        if isinstance(key, (list, tuple)):
            key = torch.as_tensor(key, dtype=torch.long)
        if isinstance(key, Tensor):
            key = key.cpu()
        return LazyImages(self.paths, self.transform, self.index[key])

    def load(self) -> Tensor:
        """The decoded images, ``N x 3 x image_size x image_size`` float32."""
        if not len(self.index):
            return torch.empty(self.shape)
        return torch.stack([self.transform(self.paths[int(i)]) for i in self.index])

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.load().to(*args, **kwargs)

    def contiguous(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.load().contiguous(*args, **kwargs)

    def float(self) -> Tensor:
        return self.load()


def as_tensor(x: Any) -> Any:
    """``x`` decoded if it is a :class:`LazyImages` view, else unchanged."""
    return x.load() if isinstance(x, LazyImages) else x


def is_images(x: Any) -> bool:
    """Whether ``x`` is a non-empty batch of inputs: a tensor or a lazy image view."""
    return isinstance(x, (Tensor, LazyImages)) and len(x) > 0


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def load_image_folder(
    root: str | Path,
    *,
    image_size: int = 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Dataset:
    """A :class:`Dataset` over the images under ``root`` (see the module docstring).

    Raises
    ------
    DataError
        ``root`` is no folder, has fewer than two classes, a class without images, or a
        train/val split whose classes differ.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of class subfolders")
    transform = ImageTransform(int(image_size), tuple(mean), tuple(std))
    held = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if (root / "train").is_dir() and held is not None:
        classes = [d.name for d in _class_dirs(root / "train")]
        if [d.name for d in _class_dirs(held)] != classes:
            raise DataError(f"{root}: the classes of train/ and {held.name}/ differ")
        parts = [
            [(f, c) for c, name in enumerate(classes) for f in _files(base / name)]
            for base in (root / "train", held)
        ]
        train, test = parts
    else:
        dirs = _class_dirs(root)
        classes = [d.name for d in dirs]
        train, test = [], []
        for c, d in enumerate(dirs):
            files = _files(d)
            if not files:
                raise DataError(
                    f"{root}: class folder {d.name!r} holds no images ({sorted(SUFFIXES)})"
                )
            n_test = max(1, round(TEST_FRACTION * len(files))) if len(files) > 1 else 0
            step = len(files) / n_test if n_test else 0
            held_out = {int(i * step) for i in range(n_test)}
            for i, f in enumerate(files):
                (test if i in held_out else train).append((f, c))
    if len(classes) < 2:
        raise DataError(f"{root} needs at least two class subfolders, found {classes}")
    if not train or not test:
        raise DataError(f"{root}: no images to train on or none to test on")
    paths = tuple(f for f, _ in train) + tuple(f for f, _ in test)
    labels = torch.tensor([c for _, c in train] + [c for _, c in test], dtype=torch.long)
    n = len(train)
    everything = torch.arange(len(paths))
    return Dataset(
        name=root.name,
        x_train=LazyImages(paths, transform, everything[:n]),  # type: ignore[arg-type]
        y_train=labels[:n],
        x_test=LazyImages(paths, transform, everything[n:]),  # type: ignore[arg-type]
        y_test=labels[n:],
        num_classes=len(classes),
        classes=tuple(classes),
    )
