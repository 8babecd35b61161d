"""Max pooling's indices (return_indices=True) and MaxUnpool1d/2d/3d: PyTorch parity,
finite differences, behaviour."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from convnp.gradcheck import numerical_gradient, relative_error
from convnp.layers import MaxPool1d, MaxPool2d, MaxPool3d, MaxUnpool1d, MaxUnpool2d, MaxUnpool3d

POOLS = {1: MaxPool1d, 2: MaxPool2d, 3: MaxPool3d}
UNPOOLS = {1: MaxUnpool1d, 2: MaxUnpool2d, 3: MaxUnpool3d}
# (input shape, pool arguments)
CASES = [
    ((2, 3, 9), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ((1, 2, 7, 6), {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0)}),
    ((2, 2, 7, 7), {"kernel_size": 3, "stride": 2, "dilation": 2, "ceil_mode": True}),
    ((2, 2, 8, 8), {"kernel_size": 2}),
    ((1, 2, 5, 6, 5), {"kernel_size": 2, "stride": (2, 1, 2), "padding": (1, 0, 1)}),
]


def _distinct(rng, shape):
    """A permutation: every window has one winner (no ties at the kink)."""
    return rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64)


@pytest.mark.parametrize("shape,arguments", CASES)
def test_indices_match_torch(shape, arguments, rng):
    torch = pytest.importorskip("torch")
    nd = len(shape) - 2
    x = _distinct(rng, shape)
    y, indices = POOLS[nd](**arguments, return_indices=True).forward(x)
    twin = getattr(torch.nn, f"MaxPool{nd}d")(**arguments, return_indices=True)
    y_t, indices_t = twin(torch.tensor(x))
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    assert indices.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,arguments", [c for c in CASES if "dilation" not in c[1]])
def test_unpool_matches_torch(shape, arguments, dtype, rng):
    """Pool then unpool, both libraries; output and ∂E/∂x of the unpool for a random dy."""
    torch = pytest.importorskip("torch")
    nd = len(shape) - 2
    pool_arguments = {k: v for k, v in arguments.items() if k != "ceil_mode"}
    x = _distinct(rng, shape).astype(dtype)
    pooled, indices = POOLS[nd](**pool_arguments, return_indices=True).forward(x)
    unpool = UNPOOLS[nd](**pool_arguments)
    y = unpool.forward(pooled, indices, output_size=shape[2:])
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = unpool.backward(dy)

    pooled_t = torch.tensor(pooled, requires_grad=True)
    twin = getattr(torch.nn, f"MaxUnpool{nd}d")(**pool_arguments)
    y_t = twin(pooled_t, torch.tensor(indices), output_size=shape[2:])
    y_t.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_allclose(dx, pooled_t.grad.numpy(), rtol=1e-6)
    assert y.dtype == dx.dtype == dtype


@pytest.mark.parametrize(
    "shape,arguments",
    [
        ((2, 3, 9), {"kernel_size": 2, "padding": 1}),
        CASES[3],
        ((1, 2, 4, 6, 4), {"kernel_size": 2}),
    ],
)
def test_unpool_gradient_matches_finite_differences(shape, arguments, rng):
    """Disjoint windows: each position is named once, so the gather is the exact adjoint."""
    nd = len(shape) - 2
    pooled, indices = POOLS[nd](**arguments, return_indices=True).forward(_distinct(rng, shape))
    unpool = UNPOOLS[nd](**arguments)
    forward = functools.partial(unpool.forward, indices=indices, output_size=shape[2:])
    r = rng.standard_normal(forward(pooled).shape)
    analytic = unpool.backward(r)
    numeric = numerical_gradient(lambda: float(np.sum(forward(pooled) * r)), pooled)
    assert relative_error(analytic, numeric) < 1e-7


def test_unpool_default_output_size_and_zeros():
    """(in − 1)·stride − 2·padding + kernel, values only where the indices point."""
    unpool = MaxUnpool2d(2)
    x = np.array([[[[1.0, 2.0]]]])
    y = unpool.forward(x, np.array([[[[1, 6]]]]))
    assert y.shape == (1, 1, 2, 4)
    np.testing.assert_array_equal(y[0, 0], [[0, 1, 0, 0], [0, 0, 2, 0]])


def test_return_indices_in_config_and_eval_mode(rng):
    pool = MaxPool2d(2, return_indices=True).eval()  # eval still computes the indices
    y, indices = pool.forward(_distinct(rng, (1, 1, 4, 4)))
    assert indices.shape == y.shape
    assert "return_indices=True" in repr(pool) and "return_indices" not in repr(MaxPool2d(2))
    assert MaxPool2d(**pool.config()).return_indices


@pytest.mark.parametrize(
    "indices, output_size, message",
    [
        (np.array([[[[0, 9]]]]), None, r"\[0, 8\) for output size \(2, 4\)"),
        (np.array([[[0, 1]]]), None, "indices must be integers of the input's shape"),
        (np.array([[[[0.0, 1.0]]]]), None, "indices must be integers"),
        (np.array([[[[0, 1]]]]), (3,), "output_size must name 2 sizes"),
    ],
)
def test_unpool_errors(indices, output_size, message):
    with pytest.raises(ValueError, match=message):
        MaxUnpool2d(2).forward(np.ones((1, 1, 1, 2)), indices, output_size)


@pytest.mark.parametrize("shape,arguments", [CASES[0], CASES[3], CASES[4]])
def test_unpool_without_batch_axis_matches_torch(shape, arguments, rng):
    """x and indices (C, *in) -> (C, *out), as PyTorch; equal to a batch of one."""
    torch = pytest.importorskip("torch")
    nd = len(shape) - 2
    pooled, indices = POOLS[nd](**arguments, return_indices=True).forward(_distinct(rng, shape))
    pooled, indices = pooled[0], indices[0]  # one sample, no batch axis
    unpool = UNPOOLS[nd](**arguments)
    y = unpool.forward(pooled, indices, output_size=shape[2:])
    assert y.shape == (shape[1], *shape[2:])
    dy = rng.standard_normal(y.shape)
    dx = unpool.backward(dy)
    assert dx.shape == pooled.shape

    pooled_t = torch.tensor(pooled, requires_grad=True)
    twin = getattr(torch.nn, f"MaxUnpool{nd}d")(**arguments)
    y_t = twin(pooled_t, torch.tensor(indices), output_size=shape[2:])
    y_t.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_array_equal(dx, pooled_t.grad.numpy())

    batch = unpool.forward(pooled[None], indices=indices[None], output_size=shape[2:])
    np.testing.assert_array_equal(batch[0], y)
    np.testing.assert_array_equal(unpool.backward(dy[None])[0], dx)
    with pytest.raises(ValueError, match="indices must be integers of the input's shape"):
        unpool.forward(pooled, indices[None], output_size=shape[2:])
