"""The public gradient checker must catch wrong gradients and refuse float32."""

from __future__ import annotations

import numpy as np
import pytest

from convnp import gradcheck
from convnp.gradcheck import numerical_gradient, relative_error
from convnp.layers import AvgPool2d, Conv2d, Flatten, Linear, Sigmoid
from convnp.model import Sequential


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


def test_default_check_samples_entries_and_says_how_many(rng):
    errors = gradcheck(Linear(30, 20, dtype=np.float64, rng=rng), rng.standard_normal((2, 30)))
    assert errors.checked == {"input": 20, "weight": 20, "bias": 20}
    assert errors.sizes == {"input": 60, "weight": 600, "bias": 20}
    assert "weight: " in str(errors) and "(20 of 600 entries)" in str(errors)
    assert errors.worst == max(errors.values()) < 1e-8


def test_whole_network_meets_1e7_at_the_default_step():
    """The README's network: at eps 1e-6 float64 rounding noise gave ~3e-6 on the input's
    small gradient entries; the default step keeps every array below 1e-7."""
    rng = np.random.default_rng(0)
    model = Sequential(
        Conv2d(1, 6, 5, flip_kernel=True, rng=rng), Sigmoid(), AvgPool2d(2),
        Conv2d(6, 12, 5, flip_kernel=True, rng=rng), Sigmoid(), AvgPool2d(2),
        Flatten(), Linear(192, 10, rng=rng), Sigmoid(),
    ).astype(np.float64)  # fmt: skip
    errors = gradcheck(model, rng.random((10, 1, 28, 28)))
    assert set(errors) == {
        "input",
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
        "7.weight",
        "7.bias",
    }
    assert errors.worst < 1e-7, str(errors)
