"""The public gradient checker must catch wrong gradients and refuse float32."""

from __future__ import annotations

import numpy as np
import pytest

from convnp import gradcheck
from convnp.gradcheck import numerical_gradient, relative_error
from convnp.layers import Linear


class _WrongLinear(Linear):
    """A Linear whose weight gradient is transposed-and-scaled wrong on purpose."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["weight"] *= 1.01
        return dx


def test_correct_layer_passes(rng):
    errors = gradcheck(Linear(4, 3, dtype=np.float64, rng=rng), rng.standard_normal((2, 4)))
    assert set(errors) == {"input", "weight", "bias"}
    assert max(errors.values()) < 1e-8


def test_wrong_gradient_is_caught(rng):
    errors = gradcheck(_WrongLinear(4, 3, dtype=np.float64, rng=rng), rng.standard_normal((2, 4)))
    assert errors["weight"] > 1e-3
    assert errors["input"] < 1e-8


def test_float32_is_refused(rng):
    with pytest.raises(ValueError, match="float64"):
        gradcheck(Linear(4, 3, rng=rng), rng.standard_normal((2, 4)).astype(np.float32))


def test_sampled_checks_and_numerical_gradient(rng):
    errors = gradcheck(
        Linear(30, 20, dtype=np.float64, rng=rng), rng.standard_normal((2, 30)), max_checks=10
    )
    assert max(errors.values()) < 1e-8
    a = rng.standard_normal(5)
    numeric = numerical_gradient(lambda: float(np.sum(a**2)), a)
    assert relative_error(2 * a, numeric) < 1e-9
