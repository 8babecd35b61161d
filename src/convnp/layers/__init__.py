"""Layers: one module per family. See base.py for the protocol they share."""

from convnp.layers.activation import ELU, GELU, LeakyReLU, ReLU, ScaledTanh, Sigmoid, Softmax, Tanh
from convnp.layers.base import Layer
from convnp.layers.conv import Conv1d, Conv2d, Conv3d
from convnp.layers.dense import Flatten, Linear

__all__ = [
    "Layer",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "Linear",
    "Flatten",
    "Sigmoid",
    "Tanh",
    "ScaledTanh",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "GELU",
    "Softmax",
]
