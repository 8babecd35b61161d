"""Bouvrie's trained subsampling x_j = β_j · down(x_j) + b_j (SPEC §3): finite differences,
PyTorch parity, the layer protocol, and behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp.layers import Subsample2d

# (input shape, constructor arguments): square and non-square blocks.
CASES = [
    ((1, 1, 4, 4), dict(channels=1, kernel_size=2)),
    ((2, 3, 6, 4), dict(channels=3, kernel_size=2)),
    ((2, 2, 6, 9), dict(channels=2, kernel_size=(2, 3))),
]


def _case_id(case):
    shape, kwargs = case
    return f"{'x'.join(map(str, shape))}-" + ",".join(f"{k}={v}" for k, v in kwargs.items())


def _make(kwargs, dtype, rng):
    """The layer with random β, b, so their gradients are exercised."""
    layer = Subsample2d(**kwargs, dtype=dtype)
    layer.params["beta"][...] = rng.uniform(0.5, 1.5, layer.params["beta"].shape)
    layer.params["bias"][...] = rng.standard_normal(layer.params["bias"].shape)
    return layer


def _twin(kwargs):
    """x_j = β_j · down(x_j) + b_j with down() = n_h·n_w · avg_pool2d (Bouvrie, SPEC §3)."""
    torch = pytest.importorskip("torch")
    kernel = kwargs["kernel_size"]
    n = kernel * kernel if isinstance(kernel, int) else kernel[0] * kernel[1]

    def twin(x, params):
        down = torch.nn.functional.avg_pool2d(x, kernel) * n
        return params["beta"][:, None, None] * down + params["bias"][:, None, None]

    return twin


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gradients_match_finite_differences(case, rng):
    shape, kwargs = case
    layer = _make(kwargs, np.float64, rng)
    assert_gradients_match_numeric(layer, rng.standard_normal(shape))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_torch(case, dtype, rng):
    shape, kwargs = case
    layer = _make(kwargs, dtype, rng)
    assert_matches_torch(layer, _twin(kwargs), rng.standard_normal(shape).astype(dtype), rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_follows_the_layer_protocol(dtype, rng):
    """Config rebuilds it; backward needs a training forward; dtypes are kept."""
    shape, kwargs = CASES[1]
    layer = _make(kwargs, dtype, rng)
    assert repr(Subsample2d(6, 2)) == "Subsample2d(6, kernel_size=(2, 2))"
    rebuilt = Subsample2d(**json.loads(json.dumps(layer.config())))
    assert rebuilt.config() == layer.config() and repr(rebuilt) == repr(layer)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones((1, 1, 1, 1), dtype=dtype))
    x = rng.standard_normal(shape).astype(dtype)
    with layer.no_grad():
        layer.forward(x)
    assert layer._cache is None
    y = layer.forward(x)
    dx = layer.backward(rng.standard_normal(y.shape).astype(dtype))
    assert y.dtype == dtype and dx.dtype == dtype and dx.shape == shape
    assert all(grad.dtype == dtype for grad in layer.grads.values())
    with pytest.raises(ValueError, match="Subsample2d"):
        layer.forward(np.zeros(shape[1:], dtype=dtype))
    with pytest.raises(ValueError, match="floating-point"):
        layer.forward(np.zeros(shape, dtype=np.int64))


def test_subsample_starts_as_the_block_sum(rng):
    x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
    layer = Subsample2d(3, 2)
    assert (layer.params["beta"] == 1).all() and (layer.params["bias"] == 0).all()
    expected = np.array(
        [
            [
                [
                    [x[n, c, 2 * u : 2 * u + 2, 2 * v : 2 * v + 2].sum() for v in range(3)]
                    for u in range(2)
                ]
                for c in range(3)
            ]
            for n in range(2)
        ]
    )
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-6)


def test_gradients_are_bouvries_equations(rng):
    """∂E/∂b_j = Σ_uv δ_j, ∂E/∂β_j = Σ_uv δ_j∘d_j, ∂E/∂x_j = β_j · (δ_j ⊗ 1_{n×n})."""
    layer = _make(dict(channels=2, kernel_size=(2, 3)), np.float64, rng)
    x = rng.standard_normal((3, 2, 4, 9))
    delta = rng.standard_normal(layer.forward(x).shape)
    dx = layer.backward(delta)
    d = x.reshape(3, 2, 2, 2, 3, 3).sum(axis=(3, 5))  # down(): reshape and sum, SPEC §5
    np.testing.assert_allclose(layer.grads["bias"], delta.sum(axis=(0, 2, 3)))
    np.testing.assert_allclose(layer.grads["beta"], (delta * d).sum(axis=(0, 2, 3)))
    beta = layer.params["beta"][None, :, None, None]
    np.testing.assert_allclose(dx, beta * np.kron(delta, np.ones((1, 1, 2, 3))))


def test_subsample_rejects_indivisible_or_mismatched_input():
    layer = Subsample2d(3, 2)
    with pytest.raises(ValueError, match=r"Subsample2d.*multiples.*\(1, 3, 5, 4\)"):
        layer.forward(np.zeros((1, 3, 5, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(1, 2, 4, 4\)"):
        layer.forward(np.zeros((1, 2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype"):
        layer.forward(np.zeros((1, 3, 4, 4), dtype=np.float64))
