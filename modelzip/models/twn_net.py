"""The MNIST network of Ternary Weight Networks (Li & Liu 2016): 32C5-MP2-64C5-MP2-512FC.

The paper's Table 2 reports on it: full precision 99.41%, TWN 99.35%, BWN 99.05% (with batch
normalization, trained from scratch). Its SVM output layer is replaced by softmax here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from modelzip.models.common import MNIST_SHAPE, Normalize, lenet_feature_pixels
from modelzip.models.registry import register_model


@register_model(
    "twn_net",
    "TWN's MNIST net (Li & Liu 2016): 32C5-MP2-64C5-MP2-512FC with BN; 583,242 parameters",
    MNIST_SHAPE,
    "mnist",
)
def twn_net(input_shape: Sequence[int] = MNIST_SHAPE, num_classes: int = 10) -> nn.Sequential:
    """``conv1`` 32@5x5, BN, ReLU, max-pool 2, ``conv2`` 64@5x5, BN, ReLU, max-pool 2,
    ``fc1`` 512, BN, ReLU, ``fc2``."""
    c, pixels = lenet_feature_pixels("twn_net", input_shape, num_classes)
    return nn.Sequential(
        OrderedDict(
            normalize=Normalize(),
            conv1=nn.Conv2d(c, 32, 5),
            bn1=nn.BatchNorm2d(32),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, 5),
            bn2=nn.BatchNorm2d(64),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * pixels, 512),
            bn3=nn.BatchNorm1d(512),
            relu3=nn.ReLU(),
            fc2=nn.Linear(512, num_classes),
        )
    )
