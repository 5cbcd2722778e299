"""Compact models (the survey's Section on compact architectures): blocks, RNN units, NAS.

Importing this package registers the methods ``depthwise_separable``, ``group_conv`` and
``bottleneck_conv`` (a trained CNN's convolutions replaced by compact equivalents initialised
from its weights); :func:`distill` recovers accuracy from the original model. The search lives in
:mod:`modelzip.compact.nas` (imported on use, it is heavier).
"""

from modelzip.compact import compactify as _compactify  # noqa: F401  (registers the methods)
from modelzip.compact.cnn_blocks import (
    BottleneckBlock,
    ChannelShuffle,
    DeformableConv2d,
    DenseBlock,
    DilatedConv2d,
    FireModule,
    InvertedResidual,
    ResidualBlock,
    SeparableBlock,
    ShuffleUnit,
    channel_shuffle,
)
from modelzip.compact.compactify import (
    BottleneckConvConfig,
    DepthwiseSeparableConfig,
    GroupConvConfig,
)
from modelzip.compact.distill import distill, distillation_loss, recalibrate_batchnorm
from modelzip.compact.layers import BottleneckConv2d, DepthwiseSeparableConv2d, GroupConv2d
from modelzip.compact.rnn_cells import (
    GRUCell,
    JANETCell,
    LSTMCell,
    MGUCell,
    PhasedLSTMCell,
    RNNCell,
    SLSTMCell,
)
from modelzip.compact.rnn_networks import (
    CELLS,
    FLSTMCell,
    GLSTMCell,
    LSTMPCell,
    RecurrentLayer,
    SkipRNN,
    StackedRNN,
    make_cell,
    run_cell,
)

__all__ = [
    "CELLS",
    "BottleneckBlock",
    "BottleneckConv2d",
    "BottleneckConvConfig",
    "ChannelShuffle",
    "DeformableConv2d",
    "DenseBlock",
    "DepthwiseSeparableConfig",
    "DepthwiseSeparableConv2d",
    "DilatedConv2d",
    "FLSTMCell",
    "FireModule",
    "GLSTMCell",
    "GRUCell",
    "GroupConv2d",
    "GroupConvConfig",
    "InvertedResidual",
    "JANETCell",
    "LSTMCell",
    "LSTMPCell",
    "MGUCell",
    "PhasedLSTMCell",
    "RNNCell",
    "RecurrentLayer",
    "ResidualBlock",
    "SLSTMCell",
    "SeparableBlock",
    "ShuffleUnit",
    "SkipRNN",
    "StackedRNN",
    "channel_shuffle",
    "distill",
    "distillation_loss",
    "make_cell",
    "recalibrate_batchnorm",
    "run_cell",
]
