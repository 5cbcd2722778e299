"""``compress``: walk the model, select layers, call each method's handler, build the Report."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from modelzip.core.attention import attention_views
from modelzip.core.config import MethodConfig
from modelzip.core.context import Context, linear_views, replace_module
from modelzip.core.counting import collect_workloads, count_params, module_bytes
from modelzip.core.errors import DataError, ModelError
from modelzip.core.registry import SkipLayer, kept_form, spec_for
from modelzip.core.running import eval_inference, model_device
from modelzip.data.folder import is_images
from modelzip.deploy import dense_anchor, materialize, time_against, trainable
from modelzip.measure import measure_latency
from modelzip.models.shapes import sequence_length
from modelzip.recipe import Recipe
from modelzip.report import LayerChange, ModelStats, Report
from modelzip.serialize import RECIPE_ATTR


def _dims(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


#: What a forward pass raises on inputs of the wrong shape, dtype or range.
_FORWARD_ERRORS = (RuntimeError, IndexError, ValueError, TypeError)


def check_data_fits(model: nn.Module, data: Any) -> None:
    """Refuse a data set that ``model`` cannot take, before any work is done on it.

    Compares the data's input shape with the one the model was built for (when its build record
    tells, see :func:`modelzip.models.shapes.model_input_shape`): images against a language model
    or a text corpus against an image model, images of another size, and a corpus's vocabulary
    against the model's first embedding. Then one test input goes through the model (eval mode,
    no gradients), whose error, if any, becomes the message, and the model's output width is
    compared with the largest label (or a corpus's vocabulary). Data that is neither a
    :class:`~modelzip.data.Dataset` nor a :class:`~modelzip.data.TextCorpus` is not checked.

    Raises
    ------
    DataError
        Naming both shapes, or the largest label and the model's number of classes.
    """
    from modelzip.data import Dataset, TextCorpus
    from modelzip.models.shapes import model_input_shape

    expected = model_input_shape(model)
    if isinstance(data, Dataset):
        got = f"images of shape {_dims(data.input_shape)}"
        if expected is not None and len(expected) == 1:
            raise DataError(
                f"the model reads sequences of token ids (a text corpus such as 'shakespeare'), "
                f"but data set {data.name!r} holds {got}"
            )
        if expected is not None and tuple(expected) != data.input_shape:
            raise DataError(
                f"the model expects images of shape {_dims(expected)}, but data set "
                f"{data.name!r} holds {got}"
            )
        x = data.x_test[:1]
        labels = [y for y in (data.y_train, data.y_test) if y.numel()]
        top = max(int(y.max()) for y in labels) if labels else -1
        have = f"labels up to {top} ({top + 1} classes)"
    elif isinstance(data, TextCorpus):
        got = "sequences of character ids"
        if expected is not None and len(expected) != 1:
            raise DataError(
                f"the model expects images of shape {_dims(expected)}, but data set "
                f"{data.name!r} is a text corpus ({got})"
            )
        stream = data.test if data.test.numel() else data.train
        x = stream[: sequence_length(model, 64)][None]
        top = data.vocab_size - 1
        have = f"a vocabulary of {data.vocab_size} characters"
        # The first embedding reads the token ids (a compressed one stands for an Embedding).
        embedding = next(
            (
                m
                for m in model.modules()
                if isinstance(m, nn.Embedding) or getattr(m, "stands_for", "") == "Embedding"
            ),
            None,
        )
        rows = getattr(embedding, "num_embeddings", None)
        if isinstance(rows, int) and data.vocab_size > rows:
            raise DataError(
                f"data set {data.name!r} has {have}, but the model's embedding has {rows} rows"
            )
    else:
        return
    try:
        with eval_inference(model):
            out = model(x.to(model_device(model)))
    except _FORWARD_ERRORS as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"data set {data.name!r} ({got}) does not fit the model: one input through it "
            f"fails with {type(e).__name__}: {reason}"
        ) from None
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, torch.Tensor) and out.ndim >= 2 and top >= out.shape[-1]:
        raise DataError(
            f"data set {data.name!r} has {have}, but the model has {out.shape[-1]} outputs "
            "(classes)"
        )


def model_stats(
    model: nn.Module,
    sample: Any = None,
    *,
    data: Any = None,
    measure: bool = True,
) -> ModelStats:
    """Parameters, bytes, MACs (given a sample), latency (if ``measure``), accuracy (with data).

    With ``data``, :func:`check_data_fits` first refuses a data set the model cannot take.
    """
    if data is not None:
        check_data_fits(model, data)
    stats = ModelStats(params=count_params(model), size_bytes=module_bytes(model))
    if sample is not None:
        workloads = collect_workloads(model, sample)
        stats.macs = sum(w.macs for w in workloads)
        stats.effective_macs = sum(w.effective_macs for w in workloads)
        if measure:
            stats.latency_ms = measure_latency(model, sample)
            stats.latency_batch = int(sample.shape[0]) if isinstance(sample, torch.Tensor) else None
    if data is not None:
        from modelzip.train import evaluate

        stats.accuracy = float(evaluate(model, data)["accuracy"])
    return stats


def sample_from(
    data: Any, device: torch.device, batch: int = 64, model: nn.Module | None = None
) -> torch.Tensor | None:
    """A batch of ``data``'s test inputs on ``device`` (``batch`` images, or 16 sequences of 64
    tokens of a text corpus, fewer tokens when ``model``'s position table is shorter), for
    counting MACs and timing; None when ``data`` has none."""
    x = getattr(data, "x_test", None)
    if is_images(x):
        return x[:batch].to(device)
    test = getattr(data, "test", None)  # a text corpus: a batch of sequences
    n = sequence_length(model, 64)
    if isinstance(test, torch.Tensor) and test.numel() >= n:
        return test[: (test.numel() // n) * n][: n * 16].reshape(-1, n).to(device)
    return None


def _meets_linears(config: MethodConfig) -> bool:
    """Whether ``config`` may select Linear layers (its types, or any type)."""
    types = config.select.types or config.default_types
    return not types or "Linear" in types


def _tied_partners(model: nn.Module, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Other layers holding ``module``'s weight tensor itself (a tied output layer and token
    embedding), by name; empty for a layer whose weight is its own."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter):
        return []
    out, seen = [], {id(module)}
    for name, other in model.named_modules():
        if id(other) not in seen and getattr(other, "weight", None) is weight:
            seen.add(id(other))
            out.append((name, other))
    return out


def _tie_refusal(module: nn.Module, partners: list[tuple[str, nn.Module]]) -> str | None:
    """Why a layer whose weight is tied to ``partners`` cannot be compressed with them, if so."""
    from modelzip.core.linear_like import is_transposed_linear

    names = ", ".join(repr(n) for n, _ in partners)
    for other in [module, *(m for _, m in partners)]:
        if is_transposed_linear(other) or not isinstance(other, (nn.Linear, nn.Embedding)):
            return (
                f"its weight is tied to {names}; a {type(other).__name__} cannot share a "
                "compressed weight, and compressing one copy would store the weight twice"
            )
        if tuple(other.weight.shape) != tuple(module.weight.shape):
            return f"its weight is tied to {names} in another layout"
    return None


def _apply_layer_method(model: nn.Module, config: MethodConfig, handler: Any, ctx: Context) -> None:
    """Call ``handler`` on each selected layer and put its result in place through ``ctx``.

    A layer shared under several names is selected once and handled once (one object in, one
    replacement out); :meth:`Context.replace` swaps every name and records the change.

    The handler sees a Linear for every Linear-like layer (:func:`modelzip.core.linear_like.
    linear_view`: GPT-2's ``Conv1D``, put in the model while the handler runs, so that
    calibration sees it called) and, for a method with ``embeddings_as_tables``, for an
    ``nn.Embedding`` (its table as a bias-free Linear, :func:`modelzip.core.embedding.
    embedding_view`); what it makes of an embedding is wrapped in a
    :class:`~modelzip.core.embedding.CompressedEmbedding`.

    Layers whose weight is one tensor (an output layer tied to the token embedding) are
    compressed once, together: the handler sees the Linear among them (its bias included), its
    result takes the Linear's place and each embedding becomes a CompressedEmbedding looking up
    in it; or all are skipped with the reason.
    """
    from modelzip.core.embedding import CompressedEmbedding, embedding_view
    from modelzip.core.linear_like import linear_view

    seen: set[int] = set()
    for name, module in list(config.select.select(model, config.default_types)):
        if id(module) in seen:
            continue
        seen.add(id(module))
        group = [(name, module), *_tied_partners(model, module)]
        seen.update(id(m) for _, m in group)
        names = [n for n, _ in group]
        reason = _tie_refusal(module, group[1:]) if len(group) > 1 else None
        # The member the handler compresses: the Linear of a tie group, else the layer itself.
        source_name, source = next(
            ((n, m) for n, m in group if not isinstance(m, nn.Embedding)), (name, module)
        )
        as_table = isinstance(source, nn.Embedding)
        if reason is None and as_table and not config.embeddings_as_tables:
            if len(group) > 1:
                reason = (
                    f"its weight is tied to {', '.join(map(repr, names[1:]))}, and "
                    f"{config.method}'s form of an embedding cannot serve as their weight"
                )
            else:
                as_table = False  # the handler takes the embedding itself (tt)
        if reason is not None:
            for n in names:
                ctx.skip(n, config.method, reason)
            continue
        view = embedding_view(source) if as_table else linear_view(source)
        placed = view is not source and not as_table
        if placed:  # in the model while the handler runs: calibration hooks must see it called
            replace_module(model, source_name, view)
        run, run_config = handler, config
        joint = kept_form(config) if getattr(source, "kept_weights", False) else None
        if joint is not None:  # a pruned layer: quantized in the form that keeps its mask
            run, run_config = joint[0].handler, joint[1]
            ctx.note(name, f"kept weights quantized by {joint[0].name}, mask kept")
        try:
            new = run(view, run_config, ctx)
        except SkipLayer as e:
            new = None
            for n in names:
                ctx.skip(n, config.method, str(e))
        if placed:  # recorded as replaced from the original (or left as it was)
            replace_module(model, source_name, source)
        if new is None or new is view:
            continue  # nothing changed (a view left as it was is the layer as it was)
        try:
            members = [
                (n, CompressedEmbedding.of(m, new) if isinstance(m, nn.Embedding) else new)
                for n, m in group
                if isinstance(m, nn.Embedding) or m is source
            ] if len(group) > 1 or as_table else [(name, new)]  # fmt: skip
        except ValueError as e:
            for n in names:
                ctx.skip(n, config.method, str(e))
            continue
        tied = len(group) > 1
        first, *rest = members
        if not ctx.replace(first[0], first[1], method=config.method, tied=tied):
            continue
        for other_name, other in rest:
            note = f"tied to {first[0]!r}"
            ctx.replace(other_name, other, method=config.method, note=note, tied=True)


def _unmatched_select(model: nn.Module, config: MethodConfig) -> str | None:
    """Why ``config``'s own ``select`` (types, names or exclusions it names) picks no layer of
    ``model``, or None when it picks some or names nothing (the method's defaults apply)."""
    select = config.select
    if not (select.types or select.names or select.exclude):
        return None
    if next(iter(select.select(model, config.default_types)), None) is not None:
        return None
    named = ", ".join(
        f"{field} {list(getattr(select, field))}"
        for field in ("types", "names", "exclude")
        if getattr(select, field)
    )
    types = "" if select.types else f" (default types {list(config.default_types)})"
    return f"select matched no layer: {named}{types}"


def _apply_step(work: nn.Module, config: MethodConfig, ctx: Context) -> None:
    spec = spec_for(config)
    # Said here, for layer and whole-model methods alike: a selection that matches nothing
    # would otherwise leave the model unchanged without a word in the Report. The handler still
    # runs (a whole-model method may not select layers at all).
    unmatched = _unmatched_select(work, config)
    if unmatched is not None:
        ctx.skip("(model)", config.method, unmatched)
    if spec.scope == "model":
        # Whole-model handlers find layers by their class: they get GPT-2's Conv1D as the
        # equivalent nn.Linear (layer handlers get that view one layer at a time).
        linear_views(work)
        returned = spec.handler(work, config, ctx)  # records its changes through ctx
        # A handler written before ctx kept the record returns its changes instead.
        ctx.changes.extend(c for c in returned or [] if isinstance(c, LayerChange))
    else:
        _apply_layer_method(work, config, spec.handler, ctx)


def compress(
    model: nn.Module,
    recipe: Recipe | MethodConfig | Iterable[MethodConfig],
    data: Any = None,
    *,
    inplace: bool = False,
    finetune: Any = None,
    sample: torch.Tensor | None = None,
    evaluate: bool = True,
    measure: bool = True,
    seed: int = 0,
    progress: bool = False,
    deploy: bool = True,
) -> tuple[nn.Module, Report]:
    """Compress ``model`` with each step of ``recipe`` in order.

    Parameters
    ----------
    model:
        A trained model. It is deep-copied first unless ``inplace=True``, so the caller's model
        is never changed behind their back.
    recipe:
        A :class:`Recipe`, one method config, or a list of them.
    data:
        A data set (:func:`modelzip.data.load_dataset`). Needed by data-driven methods and for the
        accuracy and fine-tuning; a sample batch for MACs and latency is taken from it.
    finetune:
        A :class:`modelzip.train.TrainConfig` to fine-tune the compressed model on ``data``.
    sample:
        An input batch for counting MACs and timing (default: 64 test inputs of ``data``).
    evaluate, measure:
        Whether to measure accuracy (needs ``data``) and latency before and after. Latency is
        the dense original (in its own fastest memory layout) against the returned model, timed
        side by side at the end
        (interleaved, warm; each first call reported apart as ``first_call_ms``).
    deploy:
        Return the deployable form (default): every compressed layer in its fastest correct
        executable form on this CPU, measured on ``sample``
        (:func:`modelzip.deploy.materialize`; the Report's ``deployment`` says what each layer
        became and why). It is inference-only; a saved file keeps the compact form and loads
        deployed. ``False`` returns the trainable form (for fine-tuning or more recipe steps).
        Without a sample nothing can be measured and the trainable form is returned (the
        Report's ``deploy_note`` says so).

    Returns
    -------
    (model, report):
        The compressed model and a :class:`Report` of what changed.
    """
    start = time.perf_counter()
    steps = Recipe.of(recipe)
    if not isinstance(model, nn.Module):
        raise ModelError(f"compress expects a torch.nn.Module, got {type(model).__name__}")
    from modelzip.train import check_finite

    check_finite(model, "compress")
    if data is not None:
        check_data_fits(model, data)
    work = model if inplace else copy.deepcopy(model)
    from modelzip.models.registry import SOURCE_ATTR, infer_source, model_source

    if model_source(work) is None:
        # A model an allow-listed package built (torchvision.models.resnet18()): record its
        # constructor now, while its tensors still match it, so that save needs no source.
        inferred = infer_source(work)
        if inferred is not None:
            setattr(work, SOURCE_ATTR, inferred)
    # A deployed model (an earlier compress, a loaded file) takes the recipe in its compressed form.
    work = trainable(work, inplace=True)
    device = model_device(work)
    if sample is None and data is not None:
        sample = sample_from(data, device, model=work)
    eval_data = data if evaluate else None
    timed = measure and sample is not None
    # The dense original, timed side by side with the result at the end (the caller's model when
    # it is not changed in place: no copy).
    reference = (copy.deepcopy(model) if inplace else model) if timed else None
    before = model_stats(work, sample, data=eval_data, measure=False)

    ctx = Context(data=data, sample=sample, seed=seed, model=work)
    if any(_meets_linears(config) for config in steps):
        # nn.MultiheadAttention reads its packed projection directly: swapped for the same
        # attention with that projection as a layer, which methods can compress or prune.
        attention_views(work)
    for config in steps:
        for pre in config.prerequisites():
            try:
                _apply_step(work, pre, ctx)
            except ModelError as e:
                ctx.skip("(model)", pre.method, f"before {config.method}: {e}")
        _apply_step(work, config, ctx)
    history = list(getattr(work, RECIPE_ATTR, [])) + steps.to_list()
    setattr(work, RECIPE_ATTR, history)

    epochs = 0
    if finetune is not None:
        if data is None:
            raise ModelError("fine-tuning needs data: pass data=load_dataset(...)")
        from modelzip.train import train

        train(work, data, finetune, progress=progress)
        epochs = int(finetune.epochs)
    work.eval()
    deployment, deploy_note = [], ""
    if not deploy:
        deploy_note = "not deployed (deploy=False): the trainable form is returned"
    elif sample is None:
        deploy_note = "not deployed: no sample input to choose the executable forms on"
    else:
        work, chosen = materialize(work, sample, inplace=True)
        deployment = chosen.rows()
        deploy_note = chosen.note or (
            f"int8 chain: {chosen.int8_chain}" if chosen.int8_chain else ""
        )
    after = model_stats(work, sample, data=eval_data, measure=False)
    if timed:
        assert reference is not None
        dense, fast = time_against(dense_anchor(reference, sample), work, sample)
        for stats, timing in ((before, dense), (after, fast)):
            stats.latency_ms = timing.ms
            stats.latency_range_ms = [timing.min * 1e3, timing.max * 1e3]
            stats.first_call_ms = None if timing.cold is None else timing.cold * 1e3
            stats.latency_batch = int(sample.shape[0]) if isinstance(sample, torch.Tensor) else None
    report = Report(
        recipe=steps.to_list(),
        before=before,
        after=after,
        layers=ctx.changes,
        skipped=ctx.skipped,
        seconds=time.perf_counter() - start,
        finetune_epochs=epochs,
        deployment=deployment,
        deploy_note=deploy_note,
    )
    return work, report
