"""Network sparsification: pruning weights and neurons (the survey's Section V).

Grains (:mod:`.grains`), criteria (:mod:`.criteria`), schedules (:mod:`.schedule`), channel
removal traced with torch.fx (:mod:`.dependency`, :mod:`.channels`, :mod:`.rnn`), sparse storage
and execution (:mod:`.sparse_format`, :mod:`.sparse_exec`), before-calculation pruning
(:mod:`.predict`) and sparse gradient communication (:mod:`.dgc`, imported on demand).
"""

from modelzip.prune.channels import ChannelPruneConfig
from modelzip.prune.heads import FFNPruneConfig, HeadPruneConfig
from modelzip.prune.magnitude import MagnitudePruneConfig, magnitude_mask
from modelzip.prune.masked import MaskedConv2d, MaskedLinear
from modelzip.prune.methods import (
    BlockPruneConfig,
    NMPruneConfig,
    ThresholdPruneConfig,
    VectorPruneConfig,
)
from modelzip.prune.rnn import HiddenPruneConfig
from modelzip.prune.schedule import AGPCallback, GlobalPruneConfig, iterative_prune
from modelzip.prune.sparse_exec import SparseConv2d, SparseExecConfig, SparseLinear

__all__ = [
    "AGPCallback",
    "BlockPruneConfig",
    "ChannelPruneConfig",
    "FFNPruneConfig",
    "GlobalPruneConfig",
    "HeadPruneConfig",
    "HiddenPruneConfig",
    "MagnitudePruneConfig",
    "MaskedConv2d",
    "MaskedLinear",
    "NMPruneConfig",
    "SparseConv2d",
    "SparseExecConfig",
    "SparseLinear",
    "ThresholdPruneConfig",
    "VectorPruneConfig",
    "iterative_prune",
    "magnitude_mask",
]
