"""The one table of compression methods: config type -> handler.

A family registers each method next to its implementation::

    @register_method(MagnitudePruneConfig, family="prune", noop=MagnitudePruneConfig(sparsity=0.0))
    def magnitude_prune(module: nn.Module, config: MagnitudePruneConfig, ctx: Context) -> nn.Module:
        ...

A *layer* handler receives one selected module and returns its replacement (or raises
:class:`SkipLayer` with the reason); ``compress`` puts it in place through
:meth:`~modelzip.core.context.Context.replace`. A *model* handler (``scope="model"``) receives
the whole model and makes its changes through the same path (``ctx.replace``, ``ctx.record``,
``ctx.skip``), returning None; it is for methods that need a global view (global thresholds,
channel removal across coupled layers, BN folding). Either way every alias of a shared layer is
replaced together, the weight-reader guard applies, and each change is recorded once.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Callable
from typing import Any, Literal

from modelzip.core.composition import Composition
from modelzip.core.config import MethodConfig
from modelzip.core.errors import ConfigError, ModelzipError, unknown_name

# Families whose import registers their methods. Imported on first use of the registry, so that
# ``import modelzip`` stays light.
BUILTIN_FAMILIES = (
    "modelzip.prune",
    "modelzip.quantize",
    "modelzip.decompose",
    "modelzip.compact",
    "modelzip.joint",
)


class SkipLayer(ModelzipError):
    """Raised by a layer handler that cannot handle a selected layer; the reason is reported."""


@dataclasses.dataclass(frozen=True)
class Knob:
    """The one number of a method that sensitivity analysis and ``auto`` sweep.

    ``field`` is the config field (``rank_fraction``, ``bits``, ``sparsity``); ``values`` the
    settings swept by default, mildest last or first as the field reads (a
    :class:`~modelzip.joint.sensitivity.SensitivityConfig` may override them per field).
    """

    field: str
    values: tuple[float, ...]

    def config(self, config_type: type[MethodConfig], value: float, **fields: Any) -> MethodConfig:
        """``config_type`` with the knob at ``value`` (an int field gets an int)."""
        default = getattr(config_type(), self.field)
        cast = int if isinstance(default, int) and not isinstance(default, bool) else float
        return config_type(**{self.field: cast(value), **fields})


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One registered method."""

    name: str
    config_type: type[MethodConfig]
    handler: Callable[..., Any]
    scope: Literal["layer", "model"]
    family: str
    summary: str
    #: A config that must leave the model's outputs unchanged (e.g. sparsity 0), or None when the
    #: method has no such setting; the contract tests then check idempotence instead.
    noop: MethodConfig | None
    #: A sensible setting for the demo and the contract tests.
    example: MethodConfig
    #: The number sensitivity analysis and ``auto`` sweep, or None for a method without one.
    knob: Knob | None = None
    #: What kind of weights the method applies to and leaves (:mod:`modelzip.core.composition`);
    #: a recipe whose step meets weights it cannot take is refused at construction. None: not
    #: declared, never refused (its handler skips what it cannot handle, with the reason).
    composition: Composition | None = None
    #: Methods whose steps this one carries out on kept weights (a pruned layer), keeping the
    #: mask: ``{"quantize_weights": convert}``, ``convert`` making this method's config from
    #: that method's (:func:`kept_form`).
    kept_form_of: dict[str, Callable[[MethodConfig], MethodConfig]] | None = None


_METHODS: dict[str, MethodSpec] = {}
_BY_TYPE: dict[type[MethodConfig], MethodSpec] = {}
_loaded = False


def register_method(
    config_type: type[MethodConfig],
    *,
    family: str,
    example: MethodConfig | None = None,
    noop: MethodConfig | None = None,
    scope: Literal["layer", "model"] = "layer",
    knob: Knob | None = None,
    composition: Composition | None = None,
    kept_form_of: dict[str, Callable[[MethodConfig], MethodConfig]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``handler`` for ``config_type`` under ``config_type.method``.

    ``knob`` declares the number that sensitivity analysis and ``auto`` may sweep; it must be a
    field of the config. ``composition`` declares which steps may precede and follow it
    (:mod:`modelzip.core.composition`); ``kept_form_of`` names the methods whose steps this one
    carries out on a pruned layer, keeping its mask (:func:`kept_form`).
    """
    if knob is not None and knob.field not in {f.name for f in dataclasses.fields(config_type)}:
        raise ConfigError(f"{config_type.__name__} has no field {knob.field!r} to use as its knob")
    name = config_type.method
    if not name:
        raise ConfigError(f"{config_type.__name__} has no method name (class variable 'method')")

    def decorator(handler: Callable[..., Any]) -> Callable[..., Any]:
        if name in _METHODS and _METHODS[name].handler is not handler:
            raise ConfigError(f"method {name!r} is registered twice")
        doc = (handler.__doc__ or config_type.__doc__ or "").strip().splitlines()
        spec = MethodSpec(
            name=name,
            config_type=config_type,
            handler=handler,
            scope=scope,
            family=family,
            summary=doc[0] if doc else "",
            noop=noop,
            example=example if example is not None else config_type(),
            knob=knob,
            composition=composition,
            kept_form_of=kept_form_of,
        )
        _METHODS[name] = spec
        _BY_TYPE[config_type] = spec
        return handler

    return decorator


#: Families that could not be imported, with the missing package's name.
_UNAVAILABLE: dict[str, str] = {}


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for family in BUILTIN_FAMILIES:
        try:
            importlib.import_module(family)
        except ModuleNotFoundError as e:
            if e.name == family:
                continue  # a family not written yet
            if e.name and not e.name.startswith("modelzip"):
                # One family's missing third-party package must not take every other family's
                # methods down with it; its methods report the package when asked for.
                _UNAVAILABLE[family] = e.name
                warnings.warn(
                    f"{family} is unavailable: package {e.name!r} is missing "
                    f"(pip install {e.name})",
                    stacklevel=2,
                )
                continue
            raise


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    _load_builtins()
    return sorted(_METHODS)


def knob_methods() -> list[str]:
    """Names of the registered methods that declare a knob, sorted."""
    _load_builtins()
    return sorted(name for name, spec in _METHODS.items() if spec.knob is not None)


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` registered under ``name``."""
    _load_builtins()
    if name not in _METHODS:
        err = unknown_name("method", name, list(_METHODS))
        if _UNAVAILABLE:
            missing = ", ".join(f"{f} (needs {p})" for f, p in _UNAVAILABLE.items())
            err = type(err)(f"{err} Unavailable families: {missing}")
        raise err
    return _METHODS[name]


def spec_for(config: MethodConfig) -> MethodSpec:
    """The :class:`MethodSpec` that handles ``config``."""
    _load_builtins()
    try:
        return _BY_TYPE[type(config)]
    except KeyError:
        raise ConfigError(f"{type(config).__name__} is not a registered method config") from None


def registered_spec(config: MethodConfig) -> MethodSpec | None:
    """The :class:`MethodSpec` of ``config``'s type if registered, without importing families
    (a config's type registers when its module is imported)."""
    return _BY_TYPE.get(type(config))


def kept_form(config: MethodConfig) -> tuple[MethodSpec, MethodConfig] | None:
    """The method (and its config) that carries out ``config`` on kept weights keeping the mask
    (a pruned layer meeting ``quantize_weights`` is quantized by ``sparse_quantize``), if any."""
    _load_builtins()
    for spec in _METHODS.values():
        convert = (spec.kept_form_of or {}).get(config.method)
        if convert is not None:
            return spec, convert(config)
    return None


def config_from_dict(step: dict[str, Any]) -> MethodConfig:
    """Build a method config from one recipe step (``{method: name, ...fields, select: {...}}``)."""
    if not isinstance(step, dict):
        raise ConfigError(f"a recipe step must be a mapping with 'method:', got {step!r}")
    if "method" not in step:
        raise ConfigError(f"recipe step {step!r} has no 'method:' key; known: {list_methods()}")
    spec = get_method(str(step["method"]))
    return spec.config_type.from_dict(step)
