"""Network sparsification: pruning weights and neurons (the survey's Section V)."""

from modelzip.prune.magnitude import MagnitudePruneConfig, magnitude_mask
from modelzip.prune.masked import MaskedConv2d, MaskedLinear

__all__ = ["MagnitudePruneConfig", "MaskedConv2d", "MaskedLinear", "magnitude_mask"]
