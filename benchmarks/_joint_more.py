"""Parts of benchmarks/joint.py beyond Deep Compression (decomposition + pruning, quantization +
sparsity, compact + others, automatic compression). Each part is ``fn(quick) -> (rows, checks,
markdown)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PARTS: dict[str, Callable[[bool], tuple[list[dict], list[dict[str, Any]], str]]] = {}
