"""The architecture string grammar and TOML files (the built-in recipes: test_zoo.py)."""

from __future__ import annotations

import numpy as np
import pytest

from convnp.app import architectures
from convnp.layers import (
    AvgPool2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Subsample2d,
    Tanh,
)


def _types(model):
    return [type(layer) for layer in model]


def test_classic_string_is_the_deeplearntoolbox_network():
    model = architectures.from_string("6c5-2s-12c5-2s")
    assert _types(model) == [Conv2d, Sigmoid, AvgPool2d, Conv2d, Sigmoid, AvgPool2d, Flatten,
                             Linear, Sigmoid]  # fmt: skip
    assert model[0].flip_kernel and model[3].flip_kernel
    assert model[3].params["weight"].shape == (12, 6, 5, 5)
    assert model[7].params["weight"].shape == (10, 192)


def test_modern_string_with_explicit_activations():
    model = architectures.from_string("32c3p1-relu-2m-64c3p1s2-relu-2ms1-128f-tanh", (3, 32, 32), 7)
    assert _types(model) == [Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, MaxPool2d, Flatten, Linear,
                             Tanh, Linear]  # fmt: skip
    assert model[3].stride == (2, 2) and model[3].padding == (1, 1)
    assert model[5].stride == (1, 1)
    assert not model[0].flip_kernel
    assert model.forward(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 7)


def test_bouvrie_subsampling_token():
    model = architectures.from_string("4c3-relu-2b")
    assert isinstance(model[2], Subsample2d) and model[2].channels == 4


@pytest.mark.parametrize(
    "text,token,problem",
    [
        ("6c5-2x-12c5", "'2x'", "unknown token"),
        ("6c5-2s-relu-4f-3c3", "'3c3'", "convolution needs (C, H, W) input"),
        ("6c40", "'6c40'", "larger than the padded input"),
        ("2ss2", "'2ss2'", "only max pooling takes a stride"),
        ("6c5-25s", "'25s'", "larger than"),
    ],
)
def test_errors_point_at_the_bad_token(text, token, problem):
    with pytest.raises(ValueError) as error:
        architectures.from_string(text)
    message = str(error.value)
    assert token in message and problem in message
    assert "^" in message and "tokens:" in message


def test_toml_file(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(
        '[[layers]]\ntype = "Conv2d"\nin_channels = 1\nout_channels = 3\nkernel_size = 3\n'
        '[[layers]]\ntype = "ReLU"\n[[layers]]\ntype = "Flatten"\n'
        '[[layers]]\ntype = "Linear"\nin_features = 2028\nout_features = 10\n'
    )
    model = architectures.from_toml(path, rng=np.random.default_rng(0))
    assert _types(model) == [Conv2d, ReLU, Flatten, Linear]
    assert model.forward(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)
    path.write_text('[[layers]]\ntype = "Conv9d"\n')
    with pytest.raises(ValueError, match="net.toml.*unknown layer type 'Conv9d'"):
        architectures.from_toml(path)
    path.write_text("layers = [")
    with pytest.raises(ValueError, match="cannot read TOML"):
        architectures.from_toml(path)
