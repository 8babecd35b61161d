"""Grammar tokens for batch norm (bn), dropout (d<P>) and global average pooling (gap)."""

from __future__ import annotations

import numpy as np
import pytest

from convnp import io
from convnp.app import architectures
from convnp.layers import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
)


def _types(model):
    return [type(layer) for layer in model]


def test_bn_follows_maps_or_features_and_dropout_takes_its_probability():
    model = architectures.from_string("8c3p1-bn-relu-2m-d0.25-32f-bn-relu-d.5", (1, 12, 12))
    assert _types(model) == [Conv2d, BatchNorm2d, ReLU, MaxPool2d, Dropout, Flatten, Linear,
                             BatchNorm1d, ReLU, Dropout, Linear]  # fmt: skip
    assert model[1].num_features == 8 and model[7].num_features == 32
    assert model[4].p == 0.25 and model[9].p == 0.5
    assert model.forward(np.zeros((3, 1, 12, 12), np.float32)).shape == (3, 10)


def test_each_dropout_owns_its_generator_and_init_is_unchanged():
    """Dropout draws from its own child generator, so adding one leaves every init alone."""
    plain = architectures.from_string("4c3-relu-6f", rng=np.random.default_rng(0))
    dropped = architectures.from_string("4c3-relu-d0.5-6f-d0.5", rng=np.random.default_rng(0))
    np.testing.assert_array_equal(plain[0].params["weight"], dropped[0].params["weight"])
    np.testing.assert_array_equal(plain[-1].params["weight"], dropped[-1].params["weight"])
    first, second = dropped[2].rng, dropped[5].rng
    assert first is not second
    assert first.random() != second.random()


def test_final_gap_makes_a_fully_convolutional_classifier_for_any_size():
    model = architectures.from_string("8c3p1-relu-2m-10c1-gap")
    assert _types(model)[-2:] == [GlobalAvgPool2d, Flatten]
    assert not any(isinstance(layer, Linear) for layer in model)
    for size in [(28, 28), (36, 44), (13, 17)]:
        assert model.predict(np.zeros((2, 1, *size), np.float32)).shape == (2, 10)
    summary = model.summary((1, 44, 44), print_fn=None)
    assert "(10, 22, 22)" in summary and "(10, 1, 1)" in summary


def test_gap_in_the_middle_is_followed_by_the_output_layer():
    model = architectures.from_string("6c3-relu-gap-bn-16f", (3, 9, 9), 4)
    assert _types(model) == [Conv2d, ReLU, GlobalAvgPool2d, BatchNorm2d, Flatten, Linear,
                             Linear]  # fmt: skip
    assert model[-1].params["weight"].shape == (4, 16)


def test_new_tokens_survive_a_model_file(tmp_path):
    model = architectures.from_string("4c3-bn-relu-d0.1-3c1-gap", (1, 8, 8), 3)
    model.forward(np.ones((2, 1, 8, 8), np.float32))  # move the running statistics
    io.save(model, tmp_path / "m.safetensors")
    loaded = io.load(tmp_path / "m.safetensors")
    assert io.architecture(loaded) == io.architecture(model)
    np.testing.assert_array_equal(
        loaded[1].buffers["running_mean"], model[1].buffers["running_mean"]
    )
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), atol=1e-6)


@pytest.mark.parametrize(
    "text,token,problem",
    [
        (
            "6c3-relu-12c1-gap",
            "'gap'",
            r"needs 10 maps \(one per class\) before the final gap, got 12",
        ),
        ("6c3-relu-5f-gap", "'gap'", r"needs \(C, H, W\) maps"),
        ("6c3-d1.5", "'d1.5'", r"p must be in \[0, 1\]"),
        ("6c3-dx", "'dx'", "unknown token"),
    ],
)
def test_errors_point_at_the_bad_token(text, token, problem):
    with pytest.raises(ValueError, match=problem) as caught:
        architectures.from_string(text)
    assert token in str(caught.value) and "bn, d<P>, gap" in str(caught.value)
