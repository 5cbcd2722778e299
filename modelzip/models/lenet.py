"""LeNet-300-100 and LeNet-5, the MNIST models of the pruning and quantisation literature.

Both follow the versions used by Han et al., "Learning both Weights and Connections for Efficient
Neural Networks" (NeurIPS 2015) and "Deep Compression" (ICLR 2016): LeNet-300-100 with 266,610
parameters (1.64% test error) and the Caffe LeNet-5 with 431,080 (0.80%).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from modelzip.models.common import MNIST_SHAPE, Normalize, check_shape, lenet_feature_pixels
from modelzip.models.registry import register_model


@register_model(
    "lenet300",
    "LeNet-300-100: MLP 784-300-100-10 (Han et al. 2015), 266,610 parameters",
    MNIST_SHAPE,
    "mnist",
)
def lenet300(input_shape: Sequence[int] = MNIST_SHAPE, num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100: ``fc1`` 784-300, ReLU, ``fc2`` 300-100, ReLU, ``fc3`` 100-10."""
    c, h, w = check_shape(input_shape, num_classes)
    return nn.Sequential(
        OrderedDict(
            normalize=Normalize(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(c * h * w, 300),
            relu1=nn.ReLU(),
            fc2=nn.Linear(300, 100),
            relu2=nn.ReLU(),
            fc3=nn.Linear(100, num_classes),
        )
    )


@register_model(
    "lenet5",
    "LeNet-5 (Caffe): conv 20@5x5, pool, conv 50@5x5, pool, fc 800-500-10; 431,080 parameters",
    MNIST_SHAPE,
    "mnist",
)
def lenet5(input_shape: Sequence[int] = MNIST_SHAPE, num_classes: int = 10) -> nn.Sequential:
    """The Caffe LeNet-5: ``conv1`` 20@5x5, max-pool 2, ``conv2`` 50@5x5, max-pool 2, ``fc1`` 500,
    ReLU, ``fc2``.

    As in Caffe's ``lenet_train_test.prototxt`` there is no non-linearity after the convolutions
    (the max-pools are the only ones); this is the network whose figures the literature reports.
    """
    c, pixels = lenet_feature_pixels("lenet5", input_shape, num_classes)
    return nn.Sequential(
        OrderedDict(
            normalize=Normalize(),
            conv1=nn.Conv2d(c, 20, 5),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(20, 50, 5),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(50 * pixels, 500),
            relu1=nn.ReLU(),
            fc2=nn.Linear(500, num_classes),
        )
    )


@register_model(
    "lenet5_wide",
    "LeNet-5-like, wide, hardtanh: conv 32@5x5, pool, conv 64@5x5, pool, fc 1024-1024-512-10; "
    "1,631,626 parameters",
    MNIST_SHAPE,
    "mnist",
)
def lenet5_wide(input_shape: Sequence[int] = MNIST_SHAPE, num_classes: int = 10) -> nn.Sequential:
    """A wider LeNet-5 for binary networks: ``conv1`` 32@5x5, max-pool 2, ``conv2`` 64@5x5,
    max-pool 2, ``fc1`` 1024, ``fc2`` 512, ``fc3``; a hardtanh after each pool and hidden FC.

    LeNet-5's topology (LeCun et al. 1998: two 5x5 convolutions, each subsampled, then three
    fully connected layers, with squashing activations) at the widths of the TensorFlow MNIST
    tutorial's and TWN's net (32C5-64C5-FC1024). Wider because binary networks need the width
    (BNN's MNIST net is 3×4096) and because XNOR-Net's speedup grows with channels × kernel
    size: LeNet-5's 20 and 50 channels leave its real first conv and pooling most of the time.
    Hardtanh, not ReLU: the layers XNOR-Net binarizes then see centred inputs (``sign`` of a
    ReLU output is +1 everywhere), and hardtanh is what BNN's straight-through estimator of
    ``sign`` differentiates, so a trained dense net converts with little loss.
    """
    c, pixels = lenet_feature_pixels("lenet5_wide", input_shape, num_classes)
    return nn.Sequential(
        OrderedDict(
            normalize=Normalize(),
            conv1=nn.Conv2d(c, 32, 5),
            pool1=nn.MaxPool2d(2),
            act1=nn.Hardtanh(),
            conv2=nn.Conv2d(32, 64, 5),
            pool2=nn.MaxPool2d(2),
            act2=nn.Hardtanh(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * pixels, 1024),
            act3=nn.Hardtanh(),
            fc2=nn.Linear(1024, 512),
            act4=nn.Hardtanh(),
            fc3=nn.Linear(512, num_classes),
        )
    )
