"""Write the golden files: one small `.mzip` per registered method (plus the layer classes no
example reaches), each with an input and the output it gave, so that a later change to a layer
class is checked against files written before it (``tests/test_golden.py``).

Run from the repository root once, before changing a layer class, and commit what it writes:

    .venv/bin/python tests/golden/make_golden.py

A new method or layer class adds its files only, named by their stems (the existing files are
what files saved before the change look like, and must not be written again):

    .venv/bin/python tests/golden/make_golden.py xnor_net xnor_net_materialized

Models are zoo models at small sizes (a few hundred kB), so that the files stay small.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import modelzip
from modelzip.core.compact_source import SOURCE_ATTR
from modelzip.core.registry import get_method, list_methods
from modelzip.models import create

HERE = Path(__file__).resolve().parent
RECURRENT = {"LSTM", "GRU", "RNN", "Embedding"}


def model_for(method: str, types: set[str]) -> tuple[torch.nn.Module, torch.Tensor]:
    """A small zoo model the method applies to, and an input batch (fixed seed)."""
    torch.manual_seed(0)
    if types & {"LSTM", "GRU", "RNN"}:
        model = create("char_lstm", vocab_size=20, embed_dim=8, hidden_size=16, num_layers=2)
        return model.eval(), torch.randint(0, 20, (2, 12))
    if "BatchNorm2d" in types:
        model = create("vgg_small", width=4).eval()
        g = torch.Generator().manual_seed(1)
        for m in model.modules():  # non-trivial statistics, so that folding them shows
            if isinstance(m, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.5, 0.5, generator=g)
                    m.running_var.uniform_(0.5, 2.0, generator=g)
        return model, torch.rand(4, 1, 28, 28)
    return create("lenet5", input_shape=[1, 16, 16]).eval(), torch.rand(4, 1, 16, 16)


def cases() -> dict[str, tuple[str, object, bool]]:
    """File stem -> (method whose model to use, config or list of configs, whether to save the
    materialized form)."""
    out = {m: (m, get_method(m).example, False) for m in list_methods()}
    int8 = get_method("int8").example
    out["int8_static"] = ("int8", dataclasses.replace(int8, activations="static"), False)
    tt = get_method("tt").example
    conv_tt = dataclasses.replace(tt, select=modelzip.Select(types=("Conv2d",)))
    out["tt_conv"] = ("tt", conv_tt, False)
    out["tt_embedding"] = (
        "rnn_tt",
        dataclasses.replace(tt, select=modelzip.Select(types=("Embedding",))),
        False,
    )
    qw = get_method("quantize_weights").example
    out["quantize_embedding"] = (
        "rnn_tt",
        dataclasses.replace(qw, select=modelzip.Select(types=("Embedding",))),
        False,
    )
    mp = get_method("magnitude_prune").example
    out["magnitude_prune_lstm"] = (
        "rnn_tt",
        dataclasses.replace(mp, select=modelzip.Select(types=("LSTM",))),
        False,
    )
    # The executable forms materialize() builds (kernels/), saved as a deployed model would be.
    for method in ("magnitude_prune", "block_prune", "int8", "qat", "tt", "binary", "xnor_net"):
        out[f"{method}_materialized"] = (method, get_method(method).example, True)
    out["tt_conv_materialized"] = ("tt", conv_tt, True)
    # Composition: a later step compressed the factor convs of a decomposed conv ("parts").
    out["tucker2_quantize_weights"] = ("tucker2", [get_method("tucker2").example, qw], False)
    # ... and the factor tensors a TT layer holds (FactorQuantized wrapping TTConv2d, TTLinear).
    out["tt_quantize_weights"] = ("tt", [tt, qw], False)
    qat = get_method("qat").example
    out["qat_w2a2_materialized"] = ("qat", dataclasses.replace(qat, bits=2, act_bits=2), True)
    return out


def xnor_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """LeNet-5 with XNOR layers (binary weights and inputs) in place of conv2 and fc1: no recipe
    builds these yet (they need binarized activations), so they are built directly."""
    from modelzip.kernels.layers import BinaryConv2d, BinaryLinear

    model, x = model_for("binary", set())
    with torch.no_grad():  # ±α per output channel, α the mean magnitude (XNOR-Net)
        for layer in (model.conv2, model.fc1):
            w = layer.weight.flatten(1)
            alpha = w.abs().mean(1, keepdim=True)
            layer.weight.copy_((torch.where(w >= 0, 1.0, -1.0) * alpha).view_as(layer.weight))
    model.conv2 = BinaryConv2d.from_dense(model.conv2)
    model.fc1 = BinaryLinear.from_dense(model.fc1)
    return model, x


def main(only: set[str] | None = None) -> None:
    """Write every golden file, or only those whose stems are in ``only``."""
    from modelzip.kernels import materialize

    for stem, (method, config, deployed) in sorted(cases().items()):
        if only is not None and stem not in only:
            continue
        types = set(get_method(method).config_type.default_types)
        model, x = model_for(method, types)
        # The compressed (trainable) form; the `_materialized` cases deploy it below, with the
        # compressed kernel taken whatever the timing says, so that the files do not depend on
        # how fast this machine runs which form.
        steps = config if isinstance(config, list) else [config]
        small, report = modelzip.compress(model, steps, sample=x, measure=False, deploy=False)
        if not report.layers:  # e.g. blocks that do not tile LeNet-5's small layers
            torch.manual_seed(0)
            model, x = create("lenet300", input_shape=[1, 8, 8]).eval(), torch.rand(4, 1, 8, 8)
            small, report = modelzip.compress(model, steps, sample=x, measure=False, deploy=False)
        if not report.layers:
            print(f"{stem}: changed no layer, skipped")
            continue
        if deployed:
            small, _ = materialize(small, x, choose="compressed", layout="contiguous")
            # The executable layers are written as themselves (as a model built from kernel
            # layers is), not as the compact layer they remember: the file pins their stored
            # form, and tests/test_golden.py compares each loaded layer's packed_state with it.
            for module in small.modules():
                module.__dict__.pop(SOURCE_ATTR, None)
        with torch.inference_mode():
            y = small(x)
        modelzip.save(small, HERE / f"{stem}.mzip")
        save_file({"x": x.contiguous(), "y": y.contiguous()}, str(HERE / f"{stem}.io.safetensors"))
        size = (HERE / f"{stem}.mzip").stat().st_size
        print(f"{stem}: {len(report.layers)} layers, {size:,} bytes")
    if only is not None and "xnor" not in only:
        return
    model, x = xnor_model()
    with torch.inference_mode():
        y = model(x)
    modelzip.save(model, HERE / "xnor.mzip")
    save_file({"x": x.contiguous(), "y": y.contiguous()}, str(HERE / "xnor.io.safetensors"))


if __name__ == "__main__":
    main(set(sys.argv[1:]) or None)
