"""EuclideanRBF (SPEC §6): finite differences, a PyTorch twin, a loop reference, behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp.layers import EuclideanRBF

SHAPES = [(1, 1, 1), (3, 5, 4), (7, 84, 10), (2, 3, 9)]  # (batch, in_features, out_features)


def _torch_twin(x, params):
    """y_i = Σ_j (x_j − w_ij)² from torch primitives; autograd gives the reference gradients."""
    return ((x[:, None, :] - params["weight"][None, :, :]) ** 2).sum(dim=2)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_finite_differences(shape, rng):
    batch, n_in, n_out = shape
    layer = EuclideanRBF(n_in, n_out, dtype=np.float64, rng=rng)
    layer.params["weight"][...] += 0.3 * rng.standard_normal(layer.params["weight"].shape)
    assert_gradients_match_numeric(layer, rng.standard_normal((batch, n_in)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch_twin(shape, dtype, rng):
    pytest.importorskip("torch")
    batch, n_in, n_out = shape
    layer = EuclideanRBF(n_in, n_out, dtype=dtype, rng=rng)
    assert_matches_torch(layer, _torch_twin, rng.standard_normal((batch, n_in)).astype(dtype), rng)


def test_forward_matches_the_formula_by_loops(rng):
    layer = EuclideanRBF(6, 4, dtype=np.float64, rng=rng)
    x = rng.standard_normal((3, 6))
    w = layer.params["weight"]
    expected = np.zeros((3, 4))
    for n in range(3):
        for i in range(4):
            expected[n, i] = sum((x[n, j] - w[i, j]) ** 2 for j in range(6))
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-13)
    x[1] = w[2]  # an input on a centre has energy exactly 0 there
    assert layer.forward(x)[1, 2] == 0.0


def test_centres_are_random_signs_from_rng():
    first = EuclideanRBF(84, 10, rng=np.random.default_rng(5))
    again = EuclideanRBF(84, 10, rng=np.random.default_rng(5))
    weight = first.params["weight"]
    assert weight.dtype == np.float32 and weight.shape == (10, 84)
    assert set(np.unique(weight)) == {-1.0, 1.0}
    np.testing.assert_array_equal(weight, again.params["weight"])
    distances = ((weight[:, None] - weight[None]) ** 2).sum(-1)[~np.eye(10, dtype=bool)]
    assert distances.min() > 84  # distinct codes, far apart (4 x Hamming distance)


def test_behaviour(rng):
    layer = EuclideanRBF(5, 3, rng=rng)
    assert repr(layer) == "EuclideanRBF(5, 3)"
    assert EuclideanRBF(**layer.config()).config() == layer.config()
    with pytest.raises(RuntimeError, match=r"EuclideanRBF\(5, 3\).*before forward"):
        layer.backward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"EuclideanRBF\(5, 3\).*\(N, 5\).*\(2, 4\)"):
        layer.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="does not match parameter dtype"):
        layer.forward(np.zeros((2, 5)))
    x = rng.standard_normal((2, 5)).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32 and y.shape == (2, 3) and (y >= 0).all()
    with pytest.raises(ValueError, match="backward expected dy of shape"):
        layer.backward(np.zeros((3, 3), np.float32))
    assert layer.backward(np.ones_like(y)).dtype == np.float32
    with layer.no_grad():
        layer.forward(x)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones_like(y))
    with pytest.raises(ValueError, match="must be >= 1"):
        EuclideanRBF(0, 3)
