"""Tensor decompositions of layers: low-rank (SVD, spatial), Tucker-2, CP, TT, HT, recurrent.

Importing this package registers the methods ``svd``, ``lowrank_spatial``, ``tucker2``, ``cp``,
``tt``, ``ht``, ``tucker_tensorized``, ``rnn_lowrank``, ``rnn_tt`` and ``rnn_ht``.
"""

from modelzip.decompose import methods as _methods  # noqa: F401  (registers the methods)
from modelzip.decompose.budget import allocate_ranks
from modelzip.decompose.configs import (
    CPConfig,
    HTConfig,
    RNNHTConfig,
    RNNLowRankConfig,
    RNNTTConfig,
    SpatialConfig,
    SVDConfig,
    TTConfig,
    Tucker2Config,
    TuckerTensorizedConfig,
)
from modelzip.decompose.cp import CPConv2d
from modelzip.decompose.ht import HTLinear, HTTensor, dimension_tree, ht_svd, tt_to_ht
from modelzip.decompose.lowrank import ChannelLowRankConv2d, LowRankLinear, SpatialLowRankConv2d
from modelzip.decompose.recurrent import DecomposedRNN
from modelzip.decompose.tt import TTConv2d, TTLinear
from modelzip.decompose.tt_embedding import TTEmbedding
from modelzip.decompose.tucker import Tucker2Conv2d, TuckerLinear

__all__ = [
    "CPConfig",
    "CPConv2d",
    "ChannelLowRankConv2d",
    "DecomposedRNN",
    "HTConfig",
    "HTLinear",
    "HTTensor",
    "LowRankLinear",
    "RNNHTConfig",
    "RNNLowRankConfig",
    "RNNTTConfig",
    "SVDConfig",
    "SpatialConfig",
    "SpatialLowRankConv2d",
    "TTConfig",
    "TTConv2d",
    "TTEmbedding",
    "TTLinear",
    "Tucker2Config",
    "Tucker2Conv2d",
    "TuckerLinear",
    "TuckerTensorizedConfig",
    "allocate_ranks",
    "dimension_tree",
    "ht_svd",
    "tt_to_ht",
]
