"""The model zoo registry, the registry of model factories, and the record of how a model was built.

Every model that :func:`create` or :func:`resolve_model` returns carries
``model._modelzip_source``, a JSON-able dict (``{"kind": "zoo", "name", "kwargs"}`` or
``{"kind": "factory", "ref": "package.module:factory", "kwargs"}``). A saved model stores this
record next to its weights, and :func:`build_from_source` rebuilds the architecture from it, so
loading a model never needs pickle.

A record read from a file is untrusted: it may name a zoo model or a factory registered with
:func:`model_factory` (by ``package.module:name``), nothing else, and its arguments are checked
against the factory's parameters and bounds (:mod:`modelzip.core.limits`) before the call. Any other
callable runs only with the opt-in ``trust_remote_code=True`` (``--trust-remote-code`` on the
command line), given by the caller, never by a file; even then a module outside the installed
packages is imported only with it, and the standard library and modelzip's own non-factory
functions are refused always.

Constructors of allow-listed installed packages (:func:`register_package_constructors`;
torchvision's classification, detection, ... builders by default) count as registered: a model
built by ``torchvision.models.resnet18()`` directly, without modelzip, gets its record from
:func:`infer_source` (the constructor whose model has the same tensors), and a file may name that
constructor, never with ``weights`` (loading downloads nothing).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import site
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from modelzip.core.errors import ConfigError, ModelError, unknown_name
from modelzip.core.limits import Range, check_bounds
from modelzip.core.scoped import scoped

Factory = Callable[..., nn.Module]
SOURCE_ATTR = "_modelzip_source"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: the factory and what it expects."""

    name: str
    description: str
    #: Shape of one input without the batch dimension, e.g. ``(1, 28, 28)``; ``(seq_len,)`` of
    #: token ids for language models.
    input_shape: tuple[int, ...]
    #: The data set the model is meant for (a :func:`modelzip.data.list_datasets` name).
    dataset: str
    factory: Factory
    #: Ranges of the factory's numeric arguments beyond :data:`modelzip.core.limits.DEFAULT_BOUNDS`.
    bounds: tuple[tuple[str, Range], ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        """The factory's keyword arguments and their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.factory).parameters.values()
            if p.default is not inspect.Parameter.empty
        }


_MODELS: dict[str, ModelSpec] = {}

#: The zoo's modules; importing one registers its models. They are imported on the first look-up
#: of the registry (:func:`list_models`, :func:`model_info`, a factory check), not with it, so
#: that saving or loading a file does not import the compact family and the training loop that
#: some zoo models are built from.
ZOO_MODULES = (
    "modelzip.models.lenet",
    "modelzip.models.vgg",
    "modelzip.models.resnet",
    "modelzip.models.twn_net",
    "modelzip.models.char_lstm",
    "modelzip.models.compact_cnn",
    "modelzip.models.rnn_zoo",
)
_zoo_loaded = False


def _load_zoo() -> None:
    """Import the zoo's modules once (see :data:`ZOO_MODULES`)."""
    global _zoo_loaded
    if _zoo_loaded:
        return
    _zoo_loaded = True  # first, so that a zoo module asking the registry does not recurse
    try:
        for module_name in ZOO_MODULES:
            importlib.import_module(module_name)
    except BaseException:
        _zoo_loaded = False
        raise


def register_model(
    name: str,
    description: str,
    input_shape: tuple[int, ...],
    dataset: str,
    *,
    bounds: dict[str, Range] | None = None,
) -> Callable[[Factory], Factory]:
    """Register the decorated factory (keyword arguments only, with defaults) under ``name``.

    ``bounds`` gives ranges of numeric arguments (``{"blocks": (1, 16)}``) on top of
    :data:`modelzip.core.limits.DEFAULT_BOUNDS`; arguments are checked before every call.
    """

    def decorator(factory: Factory) -> Factory:
        old = _MODELS.get(name)
        if old is not None and old.factory is not factory:
            raise ModelError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelSpec(
            name, description, tuple(input_shape), dataset, factory, tuple((bounds or {}).items())
        )
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of the zoo models, sorted."""
    _load_zoo()
    return sorted(_MODELS)


def model_info(name: str) -> ModelSpec:
    """The registry entry of ``name``."""
    _load_zoo()
    if name not in _MODELS:
        raise unknown_name("model", name, list_models())
    return _MODELS[name]


def _plain_kwargs(where: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Kwargs as JSON will give them back (tuples become lists); refuse what JSON cannot hold."""
    try:
        return json.loads(json.dumps(kwargs))
    except (TypeError, ValueError) as e:
        raise ModelError(
            f"{where}: arguments must be JSON data (numbers, strings, lists): {e}"
        ) from None


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the zoo model ``name`` and record how it was built.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    **kwargs
        Arguments of the model's factory (see ``model_info(name).defaults``).

    Raises
    ------
    UnknownNameError
        ``name`` is not in the zoo.
    ModelError
        An argument is unknown or its value is refused by the factory.
    """
    spec = model_info(name)
    accepted = spec.defaults
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelError(
            f"model {name!r} has no argument {', '.join(map(repr, unknown))}; "
            f"accepted: {sorted(accepted)}"
        )
    plain = _plain_kwargs(f"model {name!r}", kwargs)
    check_bounds(plain, f"model {name!r}", dict(spec.bounds))
    try:
        model = spec.factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelError(f"cannot build model {name!r} with {kwargs}: {e}") from None
    setattr(model, SOURCE_ATTR, {"kind": "zoo", "name": name, "kwargs": plain})
    return model


# The command line's --trust-remote-code, scoped to one command (see trusting_remote_code).
_TRUST_REMOTE_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "modelzip_trust_remote_code", default=False
)


@contextlib.contextmanager
def trusting_remote_code(trust: bool = True) -> Iterator[None]:
    """Within the block, model references may import modules outside the installed packages."""
    with scoped(_TRUST_REMOTE_CODE, trust):
        yield


def _install_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {paths["purelib"], paths["platlib"], *site.getsitepackages()}
    with contextlib.suppress(AttributeError):  # virtualenvs without user site-packages
        roots.add(site.getusersitepackages())
    return [Path(r).resolve() for r in roots if r]


def is_installed_module(module_name: str) -> bool:
    """Whether importing ``module_name`` runs only installed code: it is already imported, part
    of modelzip, its top-level package lies in site-packages (located with
    ``importlib.util.find_spec``, which runs no code) or does not exist at all."""
    top = module_name.split(".")[0]
    if module_name in sys.modules or top == "modelzip":
        return True
    if top in sys.modules:
        where = getattr(sys.modules[top], "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return False
        if spec is None:
            return True  # nothing to import: the import fails with its own clear message
        where = spec.origin if spec.has_location else None
        if where is None and spec.submodule_search_locations:
            where = next(iter(spec.submodule_search_locations), None)
    if not where:
        return False
    path = Path(where).resolve()
    return any(path.is_relative_to(root) for root in _install_roots())


def _check_trusted(ref: str, module_name: str, trust_remote_code: bool) -> None:
    if trust_remote_code or _TRUST_REMOTE_CODE.get() or is_installed_module(module_name):
        return
    raise ModelError(
        f"model reference {ref!r} imports {module_name!r}, which is not an installed package; "
        "importing it runs its code: pass trust_remote_code=True (--trust-remote-code) if you "
        "trust it"
    )


def _import_factory(ref: str, trust_remote_code: bool = False) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model reference {ref!r} must look like 'package.module:factory'")
    top = module_name.split(".")[0]
    if top == "torchvision":
        from modelzip.models.torchvision_compat import import_torchvision

        import_torchvision()  # with any torch build: the model definitions need no compiled ops
    # A source record can come from a file someone sent; refusing the standard library keeps such
    # a file from naming e.g. 'os:system' or 'subprocess:run' as the "factory" to call.
    if top in sys.stdlib_module_names or top == "builtins":
        raise ModelError(f"model reference {ref!r} points into the standard library; refused")
    if ref in _FACTORIES:
        return _FACTORIES[ref].factory
    _check_trusted(ref, module_name, trust_remote_code)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"cannot import {module_name!r} for model {ref!r}: {e}") from None
    try:
        target = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise ModelError(
            f"module {module_name!r} has no attribute {attr!r} (model {ref!r})"
        ) from None
    if not callable(target):
        raise ModelError(f"{ref!r} is a {type(target).__name__}, not a callable model factory")
    if not (inspect.isfunction(target) or inspect.isclass(target) or inspect.ismethod(target)):
        raise ModelError(f"{ref!r} must be a Python function or class, not {type(target).__name__}")
    # modelzip's own functions (file writers, the CLI's entry point) are no model factories; only
    # its registered ones may be named, with trust or without.
    if top == "modelzip" and _registered(target) is None:
        raise ModelError(f"{ref!r} is not a registered model factory of modelzip; refused")
    return target


def _check_call(ref: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Refuse arguments ``factory`` does not declare, or out of its registered bounds."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ModelError(
                f"model {ref!r} has no argument {', '.join(map(repr, unknown))}; "
                f"accepted: {sorted(k for k in params if k != 'self')}"
            )
    entry = _registered(factory)
    if entry is not None:
        try:
            check_bounds(kwargs, f"model {ref!r}", dict(entry.bounds))
        except ConfigError as e:
            raise ModelError(str(e)) from None


def resolve_model(spec: str, *, trust_remote_code: bool = False, **kwargs: Any) -> nn.Module:
    """Build a model from a zoo name or a ``package.module:factory`` reference.

    Parameters
    ----------
    spec : str
        A zoo name (see :func:`list_models`) or ``"package.module:factory"``: the module is
        imported and ``factory(**kwargs)`` must return an ``nn.Module``.
    trust_remote_code : bool
        Allow importing a module that is neither imported yet nor an installed package.
    **kwargs
        Arguments of the factory; they are recorded, so they must be JSON data.

    Raises
    ------
    UnknownNameError
        ``spec`` is neither a zoo name nor a reference.
    ModelError
        The import fails or is not trusted, the attribute is missing or not callable, an argument
        is unknown or out of the factory's bounds, or it returns no ``nn.Module``.
    """
    if ":" not in spec:
        return create(spec, **kwargs)
    if spec.startswith("hf:"):
        from modelzip.models.hf import from_reference

        if kwargs:
            raise ModelError(f"model {spec!r} takes no arguments; its config file says it all")
        return _recorded(from_reference(spec))
    plain = _plain_kwargs(f"model {spec!r}", kwargs)
    factory = _import_factory(spec, trust_remote_code)
    _check_call(spec, factory, plain)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelError(f"calling {spec!r} with {kwargs} failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    setattr(model, SOURCE_ATTR, {"kind": "factory", "ref": spec, "kwargs": plain})
    return model


def _recorded(model: Any) -> nn.Module:
    """A Hugging Face model (:mod:`modelzip.models.hf`) with its build record set."""
    setattr(model, SOURCE_ATTR, dict(model.source))
    return model


def build_hf(config: dict[str, Any], model_class: str | None = None) -> nn.Module:
    """A Hugging Face transformers model built from ``config`` (a dict as in ``config.json``),
    randomly initialised, with its build record (:func:`modelzip.models.hf.build_hf_model`)."""
    from modelzip.models.hf import build_hf_model

    return _recorded(build_hf_model(config, model_class))


@dataclasses.dataclass(frozen=True)
class FactoryEntry:
    """A function or ``nn.Module`` class that a saved file may name without trust."""

    ref: str
    factory: Factory
    bounds: tuple[tuple[str, Range], ...] = ()


_FACTORIES: dict[str, FactoryEntry] = {}
F = TypeVar("F", bound=Callable[..., Any])


def factory_ref(fn: Callable[..., Any]) -> str:
    """``package.module:qualname``, the name under which ``fn`` is registered and recorded."""
    return f"{fn.__module__}:{fn.__qualname__}"


def model_factory(
    fn: F | None = None, *, bounds: dict[str, Range] | None = None
) -> F | Callable[[F], F]:
    """Register ``fn`` (a function or ``nn.Module`` class) as a model factory that files may name.

    Use as ``@model_factory``, ``@model_factory(bounds={"depth": (1, 50)})`` or
    ``model_factory(torchvision.models.resnet18)`` for a factory of another package. A build
    record read from a file may come from anyone; calling whatever it names with the file's
    arguments (``numpy:savetxt``, a file writer, a command's entry point) would be a gadget, so
    without trust a record may name only a zoo model or a factory registered here, and its
    arguments must be parameters of the factory within ``bounds`` (and the defaults of
    :mod:`modelzip.core.limits`).
    """

    def register(target: F) -> F:
        if not (inspect.isfunction(target) or inspect.isclass(target)):
            raise ModelError(f"model_factory takes a function or class, not {target!r}")
        if inspect.isclass(target) and not issubclass(target, nn.Module):
            raise ModelError(f"model_factory: class {target.__qualname__} is no torch.nn.Module")
        ref = factory_ref(target)
        _FACTORIES[ref] = FactoryEntry(ref, target, tuple((bounds or {}).items()))
        return target

    return register if fn is None else register(fn)


#: Installed packages whose model constructors files may name: module prefix -> a function
#: returning the allowed constructors (called only once the package is imported).
_PACKAGE_CONSTRUCTORS: dict[str, Callable[[], list[Callable[..., Any]]]] = {}
#: Arguments of a package constructor a file may not set (they download weights).
_DOWNLOAD_ARGS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


def register_package_constructors(
    prefix: str, constructors: Callable[[], list[Callable[..., Any]]]
) -> None:
    """Allow files to name the constructors ``constructors()`` lists, of modules under ``prefix``
    (e.g. ``"torchvision.models"``), as if each were registered with :func:`model_factory`."""
    _PACKAGE_CONSTRUCTORS[prefix] = constructors


def _torchvision_constructors() -> list[Callable[..., Any]]:
    from modelzip.models.torchvision_compat import import_torchvision

    tv = import_torchvision().models
    return [tv.get_model_builder(name) for name in tv.list_models()]


register_package_constructors("torchvision.models", _torchvision_constructors)


def _package_constructor(target: Callable[..., Any]) -> FactoryEntry | None:
    module = getattr(target, "__module__", None) or ""
    for prefix, lister in _PACKAGE_CONSTRUCTORS.items():
        top = prefix.split(".")[0]
        inside = module == prefix or module.startswith(prefix + ".")
        if inside and top in sys.modules and any(c is target for c in lister()):
            return FactoryEntry(factory_ref(target), target)
    return None


def _constructor_kwargs_safe(ref: str, kwargs: dict[str, Any]) -> None:
    set_ = [k for k in _DOWNLOAD_ARGS if kwargs.get(k) not in (None, False)]
    if set_:
        raise ModelError(
            f"model {ref!r}: a saved file may not set {set_} (loading downloads nothing); "
            "save the model's weights in the file instead"
        )


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Within the block ``torch.nn.init``'s in-place initialisers do nothing (a structure only)."""
    import torch

    saved = {}
    for name in dir(torch.nn.init):
        fn = getattr(torch.nn.init, name)
        if name.endswith("_") and not name.startswith("_") and callable(fn):
            saved[name] = fn
            setattr(torch.nn.init, name, lambda tensor, *a, **k: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def build_structure(factory: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    """``factory(**kwargs)`` for its structure only: on the meta device (no memory), or, for a
    constructor that reads the tensors it builds (RegNet computes its widths with torch), on the
    CPU with the initialisers switched off (memory reserved, not written)."""
    import torch

    try:
        with torch.device("meta"):
            return factory(**kwargs)
    except Exception:
        with _no_init():
            return factory(**kwargs)


def infer_source(model: nn.Module) -> dict[str, Any] | None:
    """The build record of a model built by an allow-listed package's constructor (see
    :func:`register_package_constructors`) without modelzip: the constructor of the model's
    module whose untrained model has exactly the same tensor names and shapes (with
    ``num_classes`` read from the model when the default differs). None when no constructor, or
    more than one, fits."""

    cls_module = type(model).__module__
    prefix = next(
        (p for p in _PACKAGE_CONSTRUCTORS if cls_module == p or cls_module.startswith(p + ".")),
        None,
    )
    if prefix is None:
        return None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    options: list[dict[str, Any]] = [{}]
    if last:
        options.append({"num_classes": last[-1].out_features})
    found = []
    for fn in _PACKAGE_CONSTRUCTORS[prefix]():
        if fn.__module__ != cls_module:
            continue
        for kwargs in options:
            try:
                candidate = build_structure(fn, **kwargs)
            except Exception:
                continue
            if type(candidate) is type(model) and shapes == {
                k: tuple(v.shape) for k, v in candidate.state_dict().items()
            }:
                found.append({"kind": "factory", "ref": factory_ref(fn), "kwargs": kwargs})
                break
    return found[0] if len(found) == 1 else None


def _registered(target: Callable[..., Any]) -> FactoryEntry | None:
    """The registration of ``target``: as a factory, or as a zoo model's factory, or as a
    constructor of an allow-listed package."""
    _load_zoo()
    package = _package_constructor(target)
    if package is not None:
        return package
    entry = _FACTORIES.get(factory_ref(target)) if hasattr(target, "__qualname__") else None
    if entry is not None and entry.factory is target:
        return entry
    for spec in _MODELS.values():
        if spec.factory is target:
            return FactoryEntry(factory_ref(target), target, spec.bounds)
    return None


def model_source(model: nn.Module) -> dict[str, Any] | None:
    """The build record of ``model`` (see the module docstring), or None if it has none."""
    source = getattr(model, SOURCE_ATTR, None)
    return dict(source) if isinstance(source, dict) else None


def build_from_source(source: dict[str, Any], *, trust_remote_code: bool = False) -> nn.Module:
    """Rebuild an (untrained) model from its build record.

    Without trust (``trust_remote_code`` here or :func:`trusting_remote_code` around the call) a
    ``"factory"`` record must name a factory registered with :func:`model_factory` or a zoo
    model's factory; its module is imported only when it is installed (see the module docstring).
    """
    if not isinstance(source, dict):
        raise ModelError(f"a model source must be a dict, got {type(source).__name__}")
    kind, kwargs = source.get("kind"), source.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ModelError(f"model source kwargs must be a dict, got {kwargs!r}")
    if kind == "zoo" and isinstance(source.get("name"), str):
        try:
            return create(source["name"], **kwargs)
        except ConfigError as e:
            raise ModelError(str(e)) from None
    if kind == "hf":
        from modelzip.models.hf import build_from_record

        return _recorded(build_from_record(source))
    if kind == "factory" and isinstance(source.get("ref"), str) and ":" in source["ref"]:
        ref = source["ref"]
        trusted = trust_remote_code or _TRUST_REMOTE_CODE.get()
        factory = _import_factory(ref, trusted)
        if not trusted and _registered(factory) is None:
            raise ModelError(
                f"the file names {ref!r}, which is not a registered model factory "
                "(@modelzip.models.model_factory); calling it runs its code: register it, or "
                "pass trust_remote_code=True (--trust-remote-code) if you trust the file"
            )
        if _package_constructor(factory) is not None:
            _constructor_kwargs_safe(ref, kwargs)
        return resolve_model(ref, trust_remote_code=trusted, **kwargs)
    raise ModelError(
        f"cannot rebuild a model from source {str(source)[:200]}; "
        "expected kind 'zoo', 'factory' or 'hf'"
    )
