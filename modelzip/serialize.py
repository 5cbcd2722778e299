"""Saving and loading compressed models: one safetensors file, no pickle.

The file holds every tensor (compressed layers in their packed form, so the file is really small)
and, in the safetensors header's metadata, one JSON document::

    {"format": "modelzip/1",
     "source": {"kind": "zoo", "name": "lenet300", "kwargs": {}},   # how to build the original
     "recipe": [...],                                                 # the steps applied
     "layers": {"fc1": {"class": "modelzip.prune.masked.MaskedLinear", "spec": {...}}},
     "torch_layers": {"conv2": {"class": "Conv2d", "spec": {...}}}}  # plain layers resized

Loading rebuilds the original model from its source, swaps in the recorded layers (only classes
registered with :func:`modelzip.core.module.register_layer` and a short list of torch layers may be
named), then loads the tensors. A model from outside the zoo is rebuilt from its
``package.module:factory`` reference; a module outside the installed packages is imported only
with ``trust_remote_code=True``.

Files are untrusted input: the header length, the JSON's size and nesting, every number in the
layer specs (:mod:`modelzip.core.limits`) and the sizes they declare (checked on the ``meta``
device, which allocates nothing, against the file's size) are bounded before any memory is
allocated for them. A SHA-256 over the metadata and every tensor (:mod:`modelzip.core.integrity`)
is verified before the tensors are used; a layer missing a tensor or holding one it does not
declare is refused, and so are NaN or infinite weights unless the caller allows them.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from modelzip.core.atomic import atomic_path
from modelzip.core.attention import PackedAttention
from modelzip.core.compact_source import (
    CHAIN_ATTR,
    DEPLOYED_ATTR,
    INT8_RUNS_ATTR,
    LAYOUT_ATTR,
    ORT_ATTR,
    SPARSE_CHAIN_ATTR,
    XNOR_INPUTS_ATTR,
    compact_source,
    remember_source,
)
from modelzip.core.compressed import drop_decoded_weights
from modelzip.core.context import replace_module
from modelzip.core.errors import ConfigError, ModelError
from modelzip.core.forms import build_form
from modelzip.core.integrity import DIGEST_KEY, content_digest, nonfinite_tensors, verify_digest
from modelzip.core.limits import check_bounds
from modelzip.core.module import CompressedModule, layer_class, layer_key
from modelzip.core.scoped import scoped
from modelzip.models.registry import SOURCE_ATTR

FORMAT = "modelzip/2"
#: Files written before the content checksum; they still load, with a warning.
LEGACY_FORMATS = ("modelzip/1",)
RECIPE_ATTR = "_modelzip_recipe"
#: A safetensors header (tensor table plus our JSON) larger than this is refused unread.
MAX_HEADER_BYTES = 16 << 20
#: The rebuilt model may hold at most this multiple of the file's size (plus a fixed allowance):
#: bit-packed layers decode to more than they store, but not to gigabytes from a small file.
MAX_EXPANSION = 64
EXPANSION_ALLOWANCE = 16 << 20

# Plain torch layers a file may resize (structured pruning makes smaller dense layers), with the
# constructor arguments read back from the module.
_TORCH_LAYERS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "Conv1d": (
        nn.Conv1d,
        ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"),
    ),
    "Conv2d": (
        nn.Conv2d,
        ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"),
    ),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine")),
    "Embedding": (nn.Embedding, ("num_embeddings", "embedding_dim")),
    "Identity": (nn.Identity, ()),  # a layer folded away (BN folding)
    # nn.MultiheadAttention with its projections as layers (modelzip.core.attention)
    "PackedAttention": (
        PackedAttention,
        ("embed_dim", "num_heads", "head_dim", "dropout", "proj_bias", "batch_first"),
    ),
}


#: Integer attributes of plain modules that structured pruning changes (a pruned attention
#: block's head count, GPT-2's split size) and a file may restore: only these, only where the
#: rebuilt module already has them as positive integers, within :mod:`modelzip.core.limits`.
RESTORED_ATTRIBUTES = ("num_attention_heads", "num_heads", "all_head_size", "split_size")


def _count(module: nn.Module, attr: str) -> int | None:
    value = getattr(module, attr, None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _changed_attributes(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, int]]:
    ref = dict(reference.named_modules())
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        r = ref.get(name)
        if r is None or isinstance(m, CompressedModule):
            continue
        diff = {
            a: _count(m, a)
            for a in RESTORED_ATTRIBUTES
            if _count(m, a) is not None
            and _count(r, a) is not None
            and _count(m, a) != _count(r, a)
        }
        if diff:
            out[name] = diff  # type: ignore[assignment]
    return out


def _torch_spec(module: nn.Module) -> dict[str, Any]:
    _, args = _TORCH_LAYERS[type(module).__name__]
    spec = {a: getattr(module, a) for a in args}
    if hasattr(module, "bias") and not isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        spec["bias"] = module.bias is not None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}


# The command line's --allow-nonfinite, scoped to one command (see allowing_nonfinite).
_ALLOW_NONFINITE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "modelzip_allow_nonfinite", default=False
)


@contextlib.contextmanager
def allowing_nonfinite(allow: bool = True) -> Iterator[None]:
    """Within the block, :func:`load` accepts NaN or infinite weights."""
    with scoped(_ALLOW_NONFINITE, allow):
        yield


def _top_compressed(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost compressed layers, and deployed layers that keep their compact form."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        stored = isinstance(module, CompressedModule) or compact_source(module) is not None
        if stored and not any(name.startswith(p + ".") for p in found):
            found[name] = module
    return found


def _compressed_aliases(model: nn.Module, compressed: dict[str, nn.Module]) -> dict[str, str]:
    """Other names of compressed layers (or of layers inside them) -> the name they are saved
    under: a tied output layer that is its embedding's compressed table is one object under two
    names, and must be one object again after loading."""
    first: dict[int, str] = {}
    for name, module in model.named_modules():
        first.setdefault(id(module), name)

    def stored(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in compressed)

    aliases: dict[str, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        target = first[id(module)]
        if name == target or not stored(target) or stored(name):
            continue
        if not any(name.startswith(a + ".") for a in aliases):
            aliases[name] = target
    return aliases


def _layer_record(module: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A layer's metadata entry and tensors: a deployed layer as the compact layer it was built
    from plus the executable form to build again on load, so the file stays compressed."""
    source = compact_source(module)
    if source is not None:
        entry = {"class": source.key, "spec": source.spec, "deploy": source.kind}
        return entry, source.state
    assert isinstance(module, CompressedModule)
    return {"class": layer_key(type(module)), "spec": module.spec()}, module.packed_state()


def _build_source(source: dict[str, Any], trust_remote_code: bool = False) -> nn.Module:
    from modelzip.models import build_from_source

    return build_from_source(source, trust_remote_code=trust_remote_code)


def save(model: nn.Module, path: str | Path, *, source: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (compressed or not) to one file at ``path``, atomically.

    Parameters
    ----------
    source:
        How to rebuild the uncompressed model; defaults to what :func:`modelzip.models.create`
        or :func:`modelzip.models.resolve_model` recorded on it.
    """
    path = Path(path)
    # A chained int8 model runs as a GraphModule of its eager model: the eager one is saved,
    # in the memory layout the linked one was deployed in.
    layout = model.__dict__.get(LAYOUT_ATTR)
    model = model.__dict__.get("_modelzip_eager", model)
    layout = model.__dict__.get(LAYOUT_ATTR) or layout
    source = source or getattr(model, SOURCE_ATTR, None)
    if not source:
        from modelzip.models import infer_source

        source = infer_source(model)  # a model an allow-listed package's constructor built
    if not source:
        raise ModelError(
            "cannot save a model without a recorded source: build it with "
            "modelzip.models.create(name) / resolve_model('package.module:factory'), or pass "
            "source={'kind': 'factory', 'ref': 'package.module:factory', 'kwargs': {...}}"
        )
    compressed = _top_compressed(model)
    # The record comes from the caller's own model (or argument), not from a file: trusted.
    reference = _build_source(source, trust_remote_code=True)
    ref_modules = dict(reference.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    torch_layers: dict[str, Any] = {}
    for name, module in compressed.items():
        layers[name], state = _layer_record(module)
        for key, t in state.items():
            tensors[f"{name}.{key}"] = t
    for name, module in model.named_modules():
        if name in compressed or any(name.startswith(p + ".") for p in compressed):
            continue
        kind = type(module).__name__
        ref = ref_modules.get(name)
        if kind in _TORCH_LAYERS and (
            ref is None or type(ref) is not type(module) or _torch_spec(ref) != _torch_spec(module)
        ):
            torch_layers[name] = {"class": kind, "spec": _torch_spec(module)}
    aliases = _compressed_aliases(model, compressed)
    for key, t in model.state_dict().items():
        if not any(key.startswith(p + ".") for p in (*compressed, *aliases)):
            tensors[key] = t
    # safetensors wants contiguous CPU tensors that share no memory.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "source": source,
        "recipe": list(getattr(model, RECIPE_ATTR, [])),
        "layers": layers,
        "torch_layers": torch_layers,
    }
    if aliases:
        meta["aliases"] = aliases
    attributes = _changed_attributes(model, reference)
    if attributes:
        meta["attributes"] = attributes
    if layout:
        meta["layout"] = layout
    if model.__dict__.get(CHAIN_ATTR):
        meta["int8_chain"] = True
    if model.__dict__.get(SPARSE_CHAIN_ATTR):
        meta["sparse_chain"] = True
    if model.__dict__.get(XNOR_INPUTS_ATTR):
        meta["xnor_inputs"] = True
    if model.__dict__.get(INT8_RUNS_ATTR):
        meta["int8_runs"] = True
    if model.__dict__.get(ORT_ATTR):
        meta["onnxruntime"] = model.__dict__[ORT_ATTR]
    params = list(model.parameters())
    if params and not any(p.requires_grad for p in params):
        # A deployed (inference-only) model: frozen again on load, since PyTorch may pick other
        # kernels for weights that require grad and the outputs would differ in the last bit.
        meta["inference"] = True
    meta[DIGEST_KEY] = content_digest(tensors, meta)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"modelzip": json.dumps(meta)})
    return path


def _check_header(path: Path) -> None:
    """Refuse a header length beyond the file or :data:`MAX_HEADER_BYTES` before reading it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
    if len(head) < 8:
        raise ModelError(f"{path} is not a modelzip file (only {size} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise ModelError(
            f"{path} is not a modelzip file: its header claims {n:,} bytes "
            f"(file {size:,} bytes, limit {MAX_HEADER_BYTES:,})"
        )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON document of a modelzip file (no tensors are read)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no such file: {path}")
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("modelzip")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path} is not a modelzip file (not safetensors: {e})") from None
    if raw is None:
        raise ModelError(f"{path} is a safetensors file without modelzip metadata")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ModelError(f"{path}: corrupt modelzip metadata ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *LEGACY_FORMATS):
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(f"{path}: unsupported format {str(fmt)[:80]!r}")
    for key, kind in (("source", dict), ("layers", dict), ("torch_layers", dict), ("recipe", list)):
        if not isinstance(meta.get(key), kind):
            raise ModelError(f"{path}: metadata field {key!r} is missing or not a {kind.__name__}")
    for key in ("layers", "torch_layers"):
        for name, entry in meta[key].items():
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("class"), str)
                and isinstance(entry.get("spec"), dict)
            ):
                raise ModelError(f"{path}: {key}[{name[:80]!r}] needs a 'class' and a 'spec'")
            try:
                check_bounds(entry["spec"], f"{path}: {key}[{name[:80]!r}]")
            except ConfigError as e:
                raise ModelError(str(e)) from None
            deploy = entry.get("deploy")
            if deploy is not None and not (isinstance(deploy, str) and len(deploy) <= 200):
                raise ModelError(f"{path}: {key}[{name[:80]!r}] has a malformed 'deploy' field")
    aliases = meta.get("aliases", {})
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 1000 and len(v) <= 1000
        for k, v in aliases.items()
    ):
        raise ModelError(f"{path}: metadata field 'aliases' must map layer names to layer names")
    attributes = meta.get("attributes", {})
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str)
        and isinstance(v, dict)
        and all(
            isinstance(a, str)
            and isinstance(n, int)
            and not isinstance(n, bool)
            and 0 < n <= 1 << 20
            for a, n in v.items()
        )
        for k, v in attributes.items()
    ):
        raise ModelError(
            f"{path}: metadata field 'attributes' must map layer names to positive integer counts"
        )
    if not isinstance(meta.get("inference", False), bool):
        raise ModelError(f"{path}: metadata field 'inference' must be true or false")
    if meta.get("layout", "contiguous") not in ("contiguous", "channels_last"):
        raise ModelError(f"{path}: unknown memory layout {str(meta.get('layout'))[:40]!r}")
    return meta


def _rebuild(
    path: Path, meta: dict[str, Any], trust_remote_code: bool, model: nn.Module | None = None
) -> tuple[nn.Module, dict]:
    """The model structure the metadata describes, and its compressed layers by name."""
    if model is None:
        model = _build_source(meta["source"], trust_remote_code)
    compressed: dict[str, CompressedModule] = {}
    # Any exception here comes from a spec that does not describe a valid layer: report it as a
    # bad file whatever torch or the layer class raised (a list of types would miss some).
    try:
        for name, entry in meta["torch_layers"].items():
            if entry["class"] not in _TORCH_LAYERS:
                raise KeyError(f"layer class {entry['class']!r} is not allowed")
            cls, _ = _TORCH_LAYERS[entry["class"]]
            model.set_submodule(name, cls(**entry["spec"]))
        for name, entry in meta["layers"].items():
            layer = layer_class(entry["class"]).from_spec(entry["spec"])
            model.set_submodule(name, layer)
            compressed[name] = layer
        for alias, target in meta.get("aliases", {}).items():
            model.set_submodule(alias, model.get_submodule(target))
        for name, values in meta.get("attributes", {}).items():
            module = model.get_submodule(name)
            for attr, value in values.items():
                if attr not in RESTORED_ATTRIBUTES or _count(module, attr) is None:
                    raise KeyError(f"attribute {attr!r} of {name!r} may not be set by a file")
                setattr(module, attr, value)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"{path}: cannot rebuild layer structure ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    return model, compressed


def _check_declared_size(path: Path, meta: dict[str, Any], trust_remote_code: bool) -> None:
    """Build the structure on the meta device (no memory) and bound what it would allocate."""
    from modelzip.models.registry import build_structure

    # A constructor that reads the tensors it builds (RegNet computes its widths with torch)
    # cannot run on the meta device: build_structure builds it on the CPU uninitialised (a
    # registered factory, as load does next); the file's layers are still only declared.
    trust = trust_remote_code
    base = build_structure(_build_source, source=meta["source"], trust_remote_code=trust)
    with torch.device("meta"):
        model, _ = _rebuild(path, meta, trust_remote_code, base)
    declared = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    limit = MAX_EXPANSION * path.stat().st_size + EXPANSION_ALLOWANCE
    if declared > limit:
        raise ModelError(
            f"{path}: its layers declare {declared:,} bytes of tensors, more than a file of "
            f"{path.stat().st_size:,} bytes can describe (limit {limit:,})"
        )


def _read_tensors(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor of the file, after its checksum is verified (legacy files: a warning)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read tensors ({e})") from None
    legacy = meta["format"] in LEGACY_FORMATS
    if not verify_digest(path, tensors, meta, required=not legacy):
        warnings.warn(
            f"{path} was written by an older modelzip without a content checksum; "
            "save it again to add one",
            stacklevel=3,
        )
    return tensors


def _check_layer_keys(path: Path, name: str, expected: set[str], given: set[str]) -> None:
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise ModelError(
            f"{path}: layer {name!r} is missing tensors {missing[:5]} and has unexpected "
            f"tensors {extra[:5]}"
        )


def _deploy_again(
    path: Path, model: nn.Module, meta: dict[str, Any], compressed: dict[str, CompressedModule]
) -> nn.Module:
    """Build the executable forms a deployed file records, from its compact layers."""
    for name, entry in meta["layers"].items():
        if entry.get("deploy") is None:
            continue
        layer = compressed[name].eval()
        try:
            new = build_form(layer, entry["deploy"])
        except ModelError as e:
            raise ModelError(f"{path}: layer {name!r}: {e}") from None
        except Exception as e:  # an ill-typed spec the class took (as when rebuilding above)
            raise ModelError(
                f"{path}: layer {name!r}: cannot build its executable form "
                f"{str(entry['deploy'])[:80]!r} ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        remember_source(new, layer, entry["deploy"])
        replace_module(model, name, new)
    if meta.get("int8_chain") is True:
        from modelzip.core.model_links import model_link

        # Eval first: the chain folds BatchNorms by their running statistics.
        model = model_link("int8_chain")[0](model.eval())[0]
    if meta.get("sparse_chain") is True:
        from modelzip.core.model_links import model_link

        model = model_link("sparse_chain")[0](model.eval())[0]
    if meta.get("xnor_inputs") is True:
        from modelzip.core.model_links import model_link

        model = model_link("xnor_inputs")[0](model.eval())[0]
    if meta.get("int8_runs") is True:
        from modelzip.core.model_links import model_link

        model = model_link("int8_runs")[0](model.eval())[0]
    if meta.get("layout") == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        model.__dict__[LAYOUT_ATTR] = "channels_last"
    drop_decoded_weights(model)
    if "onnxruntime" in meta:
        model = _link_onnxruntime(path, model, meta["onnxruntime"])
    return model


def _link_onnxruntime(path: Path, model: nn.Module, record: Any) -> nn.Module:
    """The deployment run whole by onnxruntime again, as it was saved; where that cannot be
    (onnxruntime not installed here), the PyTorch deployment, with a warning."""
    from modelzip.core.model_links import model_link

    eager = model.__dict__.get("_modelzip_eager", model)
    eager.__dict__[ORT_ATTR] = record
    try:
        linked, links, why = model_link("onnxruntime")[0](model)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    if not links:
        warnings.warn(
            f"{path} was deployed on onnxruntime; it runs in PyTorch here ({why})", stacklevel=3
        )
        return model
    return linked


def load(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    trust_remote_code: bool = False,
    allow_nonfinite: bool | None = None,
) -> nn.Module:
    """Rebuild a model saved by :func:`save`; its outputs are bit-identical to the saved one's.

    Parameters
    ----------
    trust_remote_code : bool
        Allow the file's ``package.module:factory`` source to call a factory that is not
        registered with :func:`modelzip.models.model_factory`, and to import a module that is
        neither installed nor already imported (importing runs its code).
    allow_nonfinite : bool, optional
        Load weights holding NaN or ±Inf instead of refusing the file (default: refuse, unless
        inside :func:`allowing_nonfinite`, the command line's ``--allow-nonfinite``).

    Raises
    ------
    ModelError
        The file is not a modelzip file, its checksum does not match, a layer's tensors are
        missing or unexpected, a weight is not finite (unless allowed), or the model it names
        cannot be built without trust.
    """
    path = Path(path)
    meta = read_metadata(path)
    _check_declared_size(path, meta, trust_remote_code)
    model, compressed = _rebuild(path, meta, trust_remote_code)
    tensors = _read_tensors(path, meta)
    bad = nonfinite_tensors(tensors)
    if allow_nonfinite is None:
        allow_nonfinite = _ALLOW_NONFINITE.get()
    if bad and not allow_nonfinite:
        raise ModelError(
            f"{path}: tensors {bad[:5]} hold NaN or infinite values; pass allow_nonfinite=True "
            "(--allow-nonfinite) to load them anyway"
        )
    try:
        for name, layer in compressed.items():
            prefix = name + "."
            given = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            _check_layer_keys(path, name, set(layer.packed_state()), set(given))
            layer.load_packed_state(given)
        skipped = (*compressed, *meta.get("aliases", {}))
        rest = collections.OrderedDict(
            (k, v) for k, v in tensors.items() if not any(k.startswith(p + ".") for p in skipped)
        )
        # The per-module versions torch's state dicts carry (safetensors keeps none); some
        # layers read them (MNASNet). The file was written from this code's modules.
        rest._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
        missing, unexpected = model.load_state_dict(rest, strict=False)
    except ModelError:
        raise
    except Exception as e:  # a tensor of the wrong shape or dtype for its layer: a bad file
        raise ModelError(
            f"{path}: tensors do not fit the model ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    missing = [k for k in missing if not any(k.startswith(p + ".") for p in skipped)]
    if missing or unexpected:
        raise ModelError(f"{path}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
    model = _deploy_again(path, model, meta, compressed)
    if meta.get("inference"):
        for p in model.parameters():
            p.requires_grad_(False)
        model.__dict__[DEPLOYED_ATTR] = True
    setattr(model, SOURCE_ATTR, meta["source"])
    setattr(model, RECIPE_ATTR, meta["recipe"])
    return model.to(map_location).eval()
