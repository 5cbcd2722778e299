"""Import torchvision's model definitions with any build of torch, the CPU one included.

The torchvision wheel on PyPI is built against PyPI's CUDA torch. With another torch build (the
CPU wheel from download.pytorch.org) its compiled ops do not load, and ``import torchvision``
fails in ``torchvision/_meta_registrations.py``, which registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` whether or not the ops exist (``RuntimeError:
operator torchvision::nms does not exist``). The model definitions are pure Python and need none
of the compiled ops (detection's NMS and RoI ops do), so :func:`import_torchvision` declares the
two schemas, when the library did not load them, before importing; calling the ops then still
fails with a clear message, while ``torchvision.models`` works.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

from modelzip.core.errors import ModelError

#: Schemas of the ops whose fake kernels torchvision registers unconditionally at import.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY: list[torch.library.Library] = []  # kept alive: dropping it would remove the schemas


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _declare_missing_ops() -> list[str]:
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if missing:
        # torchvision's own library may load later and define them; FRAGMENT allows both.
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            lib.define(_SCHEMAS[name])
        _LIBRARY.append(lib)
    return missing


def import_torchvision() -> ModuleType:
    """``torchvision``, imported so that its model definitions work with this torch build.

    Raises
    ------
    ModelError
        torchvision is not installed (``pip install --no-deps torchvision==0.28.*`` next to
        torch 2.13), or its import fails for another reason.
    """
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision"]
    try:
        import torchvision
        import torchvision.models
    except ModuleNotFoundError:
        raise ModelError(
            "torchvision is not installed: pip install --no-deps 'torchvision==0.28.*' "
            "(the release that matches torch 2.13; --no-deps keeps your torch build)"
        ) from None
    except RuntimeError as e:
        if "does not exist" not in str(e):
            raise ModelError(f"cannot import torchvision: {e}") from None
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # a half-imported package: import it again, ops declared
        _declare_missing_ops()
        try:
            import torchvision.models  # noqa: F401
        except Exception as e2:
            raise ModelError(f"cannot import torchvision: {type(e2).__name__}: {e2}") from None
    return sys.modules["torchvision"]


def classification_models() -> list[str]:
    """Every classification constructor the installed torchvision lists (``resnet18``, ...)."""
    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))
