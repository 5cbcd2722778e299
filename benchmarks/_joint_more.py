"""Parts of benchmarks/joint.py beyond Deep Compression (decomposition + pruning, quantization +
sparsity, compact + others, automatic compression). Each part is ``part(ctx) -> PartResult``."""

from __future__ import annotations

from _common import Part
from _joint_auto import part_auto, part_auto_families
from _joint_combined import part_compact_joint, part_decompose_prune, part_quant_sparsity
from _joint_compose import part_composition

PARTS: dict[str, Part] = {
    "decompose_prune": part_decompose_prune,
    "quant_sparsity": part_quant_sparsity,
    "compact_joint": part_compact_joint,
    "auto": part_auto,
    "auto_families": part_auto_families,
    "composition": part_composition,
}
