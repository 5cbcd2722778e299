"""Models from the wild (#21): torchvision's ResNet-18 on a folder of images, compressed.

A generated folder of 1,000 images (``--quick``: 200) in 4 class subfolders, read by
``modelzip.data`` as an image-folder data set at 224x224 (resize, center crop, ImageNet
normalization, decoded batch by batch). ResNet-18 as ``torchvision.models.resnet18()`` builds it
(random weights: speed and size only; accuracy on random pictures means nothing), then

* channel pruning to half the MACs (``channel_prune``, sparsity 0.3 so that a conv between two
  pruned groups keeps 0.7² ≈ 0.5 of its MACs, widths rounded to 8), and
* static int8 (calibrated on the folder's images),

each deployed by ``compress`` and timed side by side with the dense model (interleaved, warm,
median; ``modelzip.deploy.time_against``), with size and MACs. Writes
``benchmarks/results/wild.json`` (``--quick``: ``wild-quick.json``) and the ``wild`` section of
BENCHMARKS.md. The ``bert`` part is the Hugging Face half of the issue: a small BERT on token
data with int8 and head pruning, the same columns (``_wild_text.py``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    BenchContext,
    Part,
    PartResult,
    check,
    default_section,
    markdown_table,
    run_parts,
)

#: Deployed speed-up targets (dense anchor in its own fastest layout).
CHANNEL_SPEEDUP_TARGET = 1.5
INT8_SPEEDUP_TARGET = 1.2


def make_image_folder(root: Path, images: int, classes: int = 4, seed: int = 0) -> Path:
    """``images`` JPEGs of assorted sizes (about 256-320 px), ``classes`` subfolders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(images):
        c = i % classes
        h, w = int(rng.integers(240, 320)), int(rng.integers(256, 360))
        base = rng.integers(0, 255, size=(1, 1, 3))
        noise = rng.normal(0, 40, size=(h, w, 3))
        a = np.clip(base + noise + 30 * c, 0, 255).astype(np.uint8)
        path = root / f"class{c}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path, quality=90)
    return root


def _row(label: str, report: Any) -> dict[str, Any]:
    a, b = report.after, report.before
    return {
        "model": label,
        "params": a.params,
        "size_bytes": a.size_bytes,
        "size_reduction": b.size_bytes / a.size_bytes,
        "macs": a.effective_macs or a.macs,
        "mac_reduction": report.mac_reduction,
        "dense_ms": b.latency_ms,
        "ms": a.latency_ms,
        "speedup": report.speedup,
        "batch": a.latency_batch,
    }


def part_resnet18(ctx: BenchContext) -> PartResult:
    import torch

    import modelzip
    from modelzip.data import load_dataset
    from modelzip.models.torchvision_compat import import_torchvision
    from modelzip.prune.channels import ChannelPruneConfig
    from modelzip.quantize import Int8Config

    tv = import_torchvision()
    images = 200 if ctx.quick else 1000
    batch = 8 if ctx.quick else 16
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(make_image_folder(Path(tmp) / "images", images), image_size=224)
        torch.manual_seed(0)
        model = tv.models.resnet18().eval()
        sample = data.x_test[:batch].load()
        recipes = {
            "channel_prune (half the MACs)": ChannelPruneConfig(sparsity=0.3, round_to=8),
            "int8 (static, calibrated on the folder)": Int8Config(
                activations="static", calibration_size=64 if ctx.quick else 256
            ),
        }
        rows = []
        for label, config in recipes.items():
            _, report = modelzip.compress(model, [config], data, sample=sample, evaluate=False)
            rows.append(_row(label, report))
    prune, int8 = rows
    checks = [
        check("channel_prune MACs ÷", prune["mac_reduction"] or 0, 1.9, "×",
              (prune["mac_reduction"] or 0) >= 1.9),
        check("channel_prune deployed speed-up", prune["speedup"] or 0, CHANNEL_SPEEDUP_TARGET,
              "×", (prune["speedup"] or 0) >= CHANNEL_SPEEDUP_TARGET),
        check("int8 size ÷", int8["size_reduction"], 3.5, "×", int8["size_reduction"] >= 3.5),
        check("int8 deployed speed-up", int8["speedup"] or 0, INT8_SPEEDUP_TARGET, "×",
              (int8["speedup"] or 0) >= INT8_SPEEDUP_TARGET),
    ]  # fmt: skip
    table = markdown_table(
        ["ResNet-18 (torchvision)", "params", "size MB", "size ÷", "GMACs", "MACs ÷",
         "dense ms", "compressed ms", "speed-up"],
        [[r["model"], f"{r['params']:,}", f"{r['size_bytes'] / 1e6:.1f}",
          f"{r['size_reduction']:.2f}", f"{(r['macs'] or 0) / 1e9:.2f}",
          f"{r['mac_reduction'] or 0:.2f}", f"{r['dense_ms'] or 0:.1f}", f"{r['ms'] or 0:.1f}",
          f"{r['speedup'] or 0:.2f}"] for r in rows],
    )  # fmt: skip
    text = (
        f"### ResNet-18 on a folder of {images} generated images, 224x224, batch {batch}\n\n"
        "`torchvision.models.resnet18()` with random weights, data through "
        "`modelzip.data.load_dataset(folder, image_size=224)`; both rows are `compress(...)` "
        "with its default deploy step, the dense model and the deployed one timed side by side "
        "(median ms per batch).\n\n" + table
    )
    return PartResult(rows, checks, text, {"images": images, "batch": batch})


def part_bert(ctx: BenchContext) -> PartResult:
    """A small BERT built from its config (BERT-mini: 4 layers, width 256; ``--quick``: 2 layers,
    width 128) on generated token ids: int8 and half the attention heads pruned, each deployed by
    ``compress`` and timed side by side with the dense model (``_wild_text.py``)."""
    from _wild_text import bert_part

    found = bert_part(ctx.quick)
    rows = [r for r in found if r["kind"] == "row"]
    checks = [check(c["name"], c["value"], c["target"], c["unit"], c["passed"])
              for c in found if c["kind"] == "check"]  # fmt: skip
    table = markdown_table(
        ["model", "method", "params", "size MB", "size ÷", "MACs ÷", "ms", "speed-up",
         "layers changed"],
        [[r["model"], r["method"], f"{r['params']:,}", f"{r['size_bytes'] / 1e6:.2f}",
          f"{r['size_ratio']:.2f}", f"{r['mac_ratio'] or 0:.2f}", f"{r['latency_ms']:.2f}",
          f"{r['speedup']:.2f}", str(r["layers_changed"])] for r in rows],
    )  # fmt: skip
    first = rows[0]
    text = (
        f"### {first['model']} on token data, batch {first['batch']} x {first['seq_len']} "
        "tokens\n\n"
        "A Hugging Face `BertForMaskedLM` built from a config (random weights, nothing "
        "downloaded) on a `.npy` of generated token ids; `compress(...)` with int8 (every Linear "
        "and the embedding, the tied decoder with it) and with `head_prune` at 0.5, each deployed "
        "and timed side by side with the dense model (median ms per batch).\n\n" + table
    )
    return PartResult(rows, checks, text)


#: The parts of this benchmark, in order.
PARTS: dict[str, Part] = {
    "resnet18": part_resnet18,
    "bert": part_bert,
}


def main(argv: list[str] | None = None) -> int:
    return run_parts(
        "wild", "Models from the wild (`benchmarks/wild.py`)", PARTS, __doc__.splitlines()[0],
        argv, section=default_section("Models from the wild (`benchmarks/wild.py`)"), catch=True,
        keep=True,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
