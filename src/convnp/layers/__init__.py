"""Layers: one module per family. See base.py for the protocol they share."""

from convnp.layers.activation import ELU, GELU, LeakyReLU, ReLU, ScaledTanh, Sigmoid, Softmax, Tanh
from convnp.layers.adaptive_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
    GlobalAvgPool2d,
    GlobalMaxPool2d,
)
from convnp.layers.base import Layer
from convnp.layers.combine import FeatureMapCombination
from convnp.layers.conv import Conv1d, Conv2d, Conv3d
from convnp.layers.conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from convnp.layers.dense import Flatten, Linear
from convnp.layers.dropout import Dropout, Dropout2d
from convnp.layers.local import LocallyConnected2d
from convnp.layers.normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d
from convnp.layers.pool import (
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    LPPool1d,
    LPPool2d,
    LPPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
    WeightedAvgPool2d,
)
from convnp.layers.rbf import EuclideanRBF
from convnp.layers.subsample import Subsample2d
from convnp.layers.unpool import MaxUnpool1d, MaxUnpool2d, MaxUnpool3d
from convnp.layers.upsample import Upsample

__all__ = [
    "Layer",
    # convolution (SPEC §2, §6)
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "LocallyConnected2d",
    # learned combinations of feature maps (SPEC §4)
    "FeatureMapCombination",
    # pooling and subsampling (SPEC §3)
    "Subsample2d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "LPPool1d",
    "LPPool2d",
    "LPPool3d",
    "WeightedAvgPool2d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "GlobalAvgPool2d",
    "GlobalMaxPool2d",
    "MaxUnpool1d",
    "MaxUnpool2d",
    "MaxUnpool3d",
    "Upsample",
    # fully connected (SPEC §1)
    "Linear",
    "Flatten",
    # LeNet-5's Euclidean RBF output (SPEC §6)
    "EuclideanRBF",
    # activations (SPEC §1)
    "Sigmoid",
    "Tanh",
    "ScaledTanh",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "GELU",
    "Softmax",
    # regularisation and normalisation
    "Dropout",
    "Dropout2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
]
