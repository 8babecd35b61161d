"""Linear and Flatten: finite differences, PyTorch parity, behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp.layers import Flatten, Linear


@pytest.mark.parametrize(
    "batch,fan_in,fan_out,bias", [(1, 1, 1, True), (5, 7, 3, True), (4, 12, 10, False)]
)
def test_linear_gradients_match_finite_differences(batch, fan_in, fan_out, bias, rng):
    layer = Linear(fan_in, fan_out, bias, dtype=np.float64, rng=rng)
    assert_gradients_match_numeric(layer, rng.standard_normal((batch, fan_in)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "batch,fan_in,fan_out,bias", [(1, 3, 2, True), (6, 20, 9, True), (3, 5, 4, False)]
)
def test_linear_matches_torch(batch, fan_in, fan_out, bias, dtype, rng):
    torch = pytest.importorskip("torch")
    layer = Linear(fan_in, fan_out, bias, dtype=dtype, rng=rng)
    twin = torch.nn.Linear(fan_in, fan_out, bias)
    assert_matches_torch(layer, twin, rng.standard_normal((batch, fan_in)).astype(dtype), rng)


def test_linear_gradient_is_outer_product_summed_over_batch(rng):
    """∂E/∂W = Σ_n δ_n x_nᵀ (SPEC §1: an outer product, not a cross product)."""
    layer = Linear(3, 2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((4, 3))
    layer.forward(x)
    delta = rng.standard_normal((4, 2))
    layer.backward(delta)
    expected = sum(np.outer(delta[n], x[n]) for n in range(4))
    np.testing.assert_allclose(layer.grads["weight"], expected, atol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], delta.sum(axis=0), atol=1e-12)


@pytest.mark.parametrize("batch", [1, 2, 9])
@pytest.mark.parametrize("dy_dtype", [np.float32, np.float64])
def test_linear_weight_gradient_equals_the_matrix_product_bit_for_bit(batch, dy_dtype, rng):
    """np.dot for a dy of the layer's dtype (BLAS also at N = 1), np.matmul's cast for
    another: the same bits as δᵀx computed by matmul and cast to the layer's dtype."""
    layer = Linear(40, 12, dtype=np.float32, rng=rng)
    x = rng.standard_normal((batch, 40)).astype(np.float32)
    layer.forward(x)
    delta = rng.standard_normal((batch, 12)).astype(dy_dtype)
    layer.backward(delta)
    np.testing.assert_array_equal(layer.grads["weight"], (delta.T @ x).astype(np.float32))


def test_linear_errors_and_repr(rng):
    layer = Linear(192, 10, rng=rng)
    assert repr(layer) == "Linear(192, 10)"
    assert repr(Linear(3, 2, bias=False)) == "Linear(3, 2, bias=False)"
    with pytest.raises(
        ValueError, match=r"Linear\(192, 10\): expected input \(N, 192\) or \(192,\), got shape"
    ):
        layer.forward(np.zeros((2, 191), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        Linear(2, 2).backward(np.zeros((1, 2), np.float32))


def test_linear_takes_one_sample_without_a_batch_axis(rng):
    """(in_features,) -> (out_features,), as PyTorch; gradients as for a batch of one."""
    torch = pytest.importorskip("torch")
    layer = Linear(5, 3, dtype=np.float64, rng=rng)
    x = rng.standard_normal(5)
    assert_gradients_match_numeric(layer, x)
    assert_matches_torch(layer, torch.nn.Linear(5, 3).double(), x, rng)
    assert layer.forward(x).shape == (3,)


FLATTEN_CASES = [
    (1, -1, (2, 3, 4, 5)),
    (2, -1, (2, 3, 4, 5)),
    (1, -1, (1, 7)),
    (0, -1, (2, 3, 4)),  # the batch axis merged too
    (0, 1, (2, 3, 4)),
    (1, 2, (2, 3, 4, 5)),
    (-3, -2, (2, 3, 4, 5)),
    (2, 2, (2, 3, 4)),  # one axis: nothing to merge
    (-3, -1, (3, 4, 5)),
]


@pytest.mark.parametrize("start_dim,end_dim,shape", FLATTEN_CASES)
def test_flatten_matches_torch_and_round_trips(start_dim, end_dim, shape, rng):
    torch = pytest.importorskip("torch")
    layer = Flatten(start_dim, end_dim)
    x = rng.standard_normal(shape)
    assert_gradients_match_numeric(layer, x)
    assert_matches_torch(layer, torch.nn.Flatten(start_dim, end_dim), x, rng)
    assert Flatten(**layer.config()).config() == layer.config()


def test_flatten_errors():
    with pytest.raises(ValueError, match="must not come after end_dim"):
        Flatten(2, 1)
    with pytest.raises(ValueError, match=r"axes 2\.\.-1 of an input with 2 axes"):
        Flatten(2).forward(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"axes -1\.\.1 of an input with 3 axes"):
        Flatten(-1, 1).forward(np.zeros((3, 4, 5), np.float32))
