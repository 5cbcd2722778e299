"""Parts of benchmarks/joint.py beyond Deep Compression (decomposition + pruning, quantization +
sparsity, compact + others, automatic compression). Each part is ``fn(quick) -> (rows, checks,
markdown)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _joint_auto import part_auto
from _joint_combined import part_compact_joint, part_decompose_prune, part_quant_sparsity

PARTS: dict[str, Callable[[bool], tuple[list[dict], list[dict[str, Any]], str]]] = {
    "decompose_prune": part_decompose_prune,
    "quant_sparsity": part_quant_sparsity,
    "compact_joint": part_compact_joint,
    "auto": part_auto,
}
