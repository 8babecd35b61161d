"""Upsample: Bouvrie's up() for integer nearest factors, PyTorch parity for every mode,
finite differences, behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp.layers import Upsample

# (input shape, constructor arguments)
CASES = [
    ((2, 3, 5), {"scale_factor": 2}),
    ((2, 3, 4, 5), {"scale_factor": 2}),
    ((1, 2, 3, 4), {"scale_factor": (3, 2)}),
    ((1, 2, 3, 2, 4), {"scale_factor": 2}),
    ((2, 2, 5, 4), {"size": (7, 9)}),  # non-integer factors: the index map
    ((2, 2, 5, 4), {"size": 3}),  # shrinking
    ((1, 2, 5, 7), {"scale_factor": 1.7}),
    ((2, 3, 6), {"scale_factor": 2.5, "mode": "linear"}),
    ((2, 3, 6), {"size": 11, "mode": "linear", "align_corners": True}),
    ((2, 2, 4, 5), {"scale_factor": 2, "mode": "bilinear"}),
    ((2, 2, 4, 5), {"scale_factor": 2, "mode": "bilinear", "align_corners": True}),
    ((1, 2, 5, 4), {"size": (3, 9), "mode": "bilinear", "align_corners": False}),
    ((1, 2, 5, 4), {"size": (1, 9), "mode": "bilinear", "align_corners": True}),
    ((1, 2, 3, 4, 2), {"scale_factor": (1.5, 2, 3), "mode": "trilinear"}),
]


@pytest.mark.parametrize("shape,arguments", CASES)
def test_gradients_match_finite_differences(shape, arguments, rng):
    assert_gradients_match_numeric(Upsample(**arguments), rng.standard_normal(shape))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,arguments", CASES)
def test_matches_torch(shape, arguments, dtype, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(dtype)
    assert_matches_torch(Upsample(**arguments), torch.nn.Upsample(**arguments), x, rng)


@pytest.mark.parametrize("length", range(1, 9))
@pytest.mark.parametrize("out", range(1, 20))
def test_nearest_index_matches_torch_for_every_size(length, out):
    """The source index ⌊j·L/L'⌋ is rounded as PyTorch rounds it (float32)."""
    torch = pytest.importorskip("torch")
    x = np.arange(length, dtype=np.float64).reshape(1, 1, length)
    expected = torch.nn.Upsample(size=out)(torch.tensor(x)).numpy()
    np.testing.assert_array_equal(Upsample(size=out).forward(x), expected)


def test_integer_nearest_is_bouvries_up_and_its_backward_is_down(rng):
    """SPEC §3/§5: up(x) = x ⊗ 1_{n×n}; the gradient sums each n×n block."""
    x = rng.standard_normal((2, 3, 4, 5))
    layer = Upsample(scale_factor=(2, 3))
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.kron(x, np.ones((2, 3))))
    dy = rng.standard_normal(y.shape)
    expected = dy.reshape(2, 3, 4, 2, 5, 3).sum(axis=(3, 5))
    np.testing.assert_allclose(layer.backward(dy), expected, rtol=1e-14)


def test_repeat_path_equals_the_matrix_path(rng):
    """The repeat (up) fast path computes what the general interpolation matrices do."""
    x = rng.standard_normal((2, 2, 3, 4))
    fast = Upsample(scale_factor=2)
    general = Upsample(scale_factor=2)
    general._repeats = lambda *args: None  # force the matrices
    dy = rng.standard_normal((2, 2, 6, 8))
    np.testing.assert_array_equal(fast.forward(x), general.forward(x))
    np.testing.assert_allclose(fast.backward(dy), general.backward(dy), rtol=1e-14)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({}, "exactly one of size and scale_factor"),
        ({"size": 2, "scale_factor": 2}, "exactly one"),
        ({"size": 2, "mode": "bicubic"}, "mode must be one of"),
        ({"size": 2, "align_corners": True}, "linear modes only"),
        ({"scale_factor": 0}, "positive"),
    ],
)
def test_constructor_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        Upsample(**arguments)


def test_input_errors_and_config():
    with pytest.raises(ValueError, match=r"expected input \(N, C, H, W\)"):
        Upsample(scale_factor=2, mode="bilinear").forward(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="3 sizes given for 2 spatial axes"):
        Upsample(size=(2, 3, 4)).forward(np.zeros((1, 2, 3, 3)))
    layer = Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    assert Upsample(**layer.config()).config() == layer.config()
    assert repr(layer) == "Upsample(scale_factor=[2.0], mode='bilinear', align_corners=False)"
