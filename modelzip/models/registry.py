"""The model zoo registry, and the record of how a model was built.

Every model that :func:`create` or :func:`resolve_model` returns carries
``model._modelzip_source``, a JSON-able dict (``{"kind": "zoo", "name", "kwargs"}`` or
``{"kind": "factory", "ref": "package.module:factory", "kwargs"}``). A saved model stores this
record next to its weights, and :func:`build_from_source` rebuilds the architecture from it, so
loading a model never needs pickle.

A ``package.module:factory`` reference runs code. Importing a module that is neither already
imported nor part of an installed package (a ``.py`` file in the working directory or on
``PYTHONPATH``, which a downloaded file could sit next to) needs the opt-in
``trust_remote_code=True`` (``--trust-remote-code`` on the command line), like Hugging Face's
option of that name; the standard library is refused always.
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

from modelzip.errors import ModelError, unknown_name

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

    @property
    def defaults(self) -> dict[str, Any]:
        """The factory's keyword arguments and their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.factory).parameters.values()
            if p.default is not inspect.Parameter.empty
        }


_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str, description: str, input_shape: tuple[int, ...], dataset: str
) -> Callable[[Factory], Factory]:
    """Register the decorated factory (keyword arguments only, with defaults) under ``name``."""

    def decorator(factory: Factory) -> Factory:
        old = _MODELS.get(name)
        if old is not None and old.factory is not factory:
            raise ModelError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelSpec(name, description, tuple(input_shape), dataset, factory)
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of the zoo models, sorted."""
    return sorted(_MODELS)


def model_info(name: str) -> ModelSpec:
    """The registry entry of ``name``."""
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
    token = _TRUST_REMOTE_CODE.set(trust)
    try:
        yield
    finally:
        _TRUST_REMOTE_CODE.reset(token)


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
    # A source record can come from a file someone sent; refusing the standard library keeps such
    # a file from naming e.g. 'os:system' or 'subprocess:run' as the "factory" to call.
    if top in sys.stdlib_module_names or top == "builtins":
        raise ModelError(f"model reference {ref!r} points into the standard library; refused")
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
    return target


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
        The import fails or is not trusted, the attribute is missing or not callable, or it
        returns no ``nn.Module``.
    """
    if ":" not in spec:
        return create(spec, **kwargs)
    plain = _plain_kwargs(f"model {spec!r}", kwargs)
    factory = _import_factory(spec, trust_remote_code)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ModelError(f"calling {spec!r} with {kwargs} failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    setattr(model, SOURCE_ATTR, {"kind": "factory", "ref": spec, "kwargs": plain})
    return model


F = TypeVar("F", bound=Callable[..., Any])
FACTORY_MARK = "__modelzip_factory__"


def model_factory(fn: F) -> F:
    """Mark ``fn`` as a model factory, so that files naming it load without trust_remote_code.

    A build record read from a file may come from anyone; calling whatever function it names with
    the file's arguments (``numpy:savetxt``, say) would be a gadget. Without trust a record may
    name an ``nn.Module`` class, a factory of modelzip's zoo, or a function marked with this.
    """
    setattr(fn, FACTORY_MARK, True)
    return fn


def _safe_factory(target: Callable[..., Any]) -> bool:
    if inspect.isclass(target):
        return issubclass(target, nn.Module)
    module = getattr(target, "__module__", "") or ""
    return module.split(".")[0] == "modelzip" or getattr(target, FACTORY_MARK, False) is True


def model_source(model: nn.Module) -> dict[str, Any] | None:
    """The build record of ``model`` (see the module docstring), or None if it has none."""
    source = getattr(model, SOURCE_ATTR, None)
    return dict(source) if isinstance(source, dict) else None


def build_from_source(source: dict[str, Any], *, trust_remote_code: bool = False) -> nn.Module:
    """Rebuild an (untrained) model from its build record.

    A ``"factory"`` record runs the code it names: a module outside the installed packages is
    imported only with ``trust_remote_code=True`` (see the module docstring).
    """
    if not isinstance(source, dict):
        raise ModelError(f"a model source must be a dict, got {type(source).__name__}")
    kind, kwargs = source.get("kind"), source.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ModelError(f"model source kwargs must be a dict, got {kwargs!r}")
    if kind == "zoo" and isinstance(source.get("name"), str):
        return create(source["name"], **kwargs)
    if kind == "factory" and isinstance(source.get("ref"), str) and ":" in source["ref"]:
        trusted = trust_remote_code or _TRUST_REMOTE_CODE.get()
        factory = _import_factory(source["ref"], trusted)
        # A record read from a file may come from anyone: calling an arbitrary installed function
        # (numpy:savetxt, say) with the file's arguments is a gadget, so without trust it must
        # name an nn.Module class, whose constructor builds a model and nothing else.
        if not trusted and not _safe_factory(factory):
            raise ModelError(
                f"the file names {source['ref']!r}, a function that is not marked as a model "
                "factory (@modelzip.models.model_factory); calling it runs its code: pass "
                "trust_remote_code=True (--trust-remote-code) if you trust the file"
            )
        return resolve_model(source["ref"], trust_remote_code=trusted, **kwargs)
    raise ModelError(
        f"cannot rebuild a model from source {source!r}; expected kind 'zoo' or 'factory'"
    )
