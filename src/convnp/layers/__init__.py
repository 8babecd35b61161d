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
from convnp.layers.conv import Conv1d, Conv2d, Conv3d
from convnp.layers.dense import Flatten, Linear
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
from convnp.layers.subsample import Subsample2d

__all__ = [
    "Layer",
    # convolution (SPEC §2, §6)
    "Conv1d",
    "Conv2d",
    "Conv3d",
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
    # fully connected (SPEC §1)
    "Linear",
    "Flatten",
    # activations (SPEC §1)
    "Sigmoid",
    "Tanh",
    "ScaledTanh",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "GELU",
    "Softmax",
]
