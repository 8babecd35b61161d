"""Activations: finite differences, PyTorch parity, f' from the stored output, behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp.layers import ELU, GELU, LeakyReLU, ReLU, ScaledTanh, Sigmoid, Softmax, Tanh, activation

SHAPES = [(1, 1), (3, 7), (2, 3, 4, 5)]


def _kink_free(rng, shape):
    """Inputs with |x| > 1e-3 so finite differences never straddle a kink at 0."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 1e-3, 0.5, x)


def _twins(torch):
    return {
        Sigmoid: (Sigmoid, torch.nn.Sigmoid()),
        Tanh: (Tanh, torch.nn.Tanh()),
        ScaledTanh: (ScaledTanh, lambda x, p: 1.7159 * torch.tanh(2.0 / 3.0 * x)),
        ReLU: (ReLU, torch.nn.ReLU()),
        LeakyReLU: (lambda: LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
        ELU: (lambda: ELU(0.7), torch.nn.ELU(0.7)),
        GELU: (GELU, torch.nn.GELU()),
        "GELU-tanh": (lambda: GELU("tanh"), torch.nn.GELU(approximate="tanh")),
        Softmax: (Softmax, torch.nn.Softmax(dim=1)),
    }


ALL = [Sigmoid, Tanh, ScaledTanh, ReLU, LeakyReLU, ELU, GELU, "GELU-tanh", Softmax]


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_finite_differences(cls, shape, rng):
    makers = {
        LeakyReLU: lambda: LeakyReLU(0.2),
        ELU: lambda: ELU(0.7),
        "GELU-tanh": lambda: GELU("tanh"),
    }
    layer = makers.get(cls, cls)()
    assert_gradients_match_numeric(layer, _kink_free(rng, shape))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_matches_torch(cls, dtype, shape, rng):
    torch = pytest.importorskip("torch")
    make, twin = _twins(torch)[cls]
    x = (3 * _kink_free(rng, shape)).astype(dtype)
    assert_matches_torch(make(), twin, x, rng)


def test_derivatives_come_from_the_stored_output(rng):
    """SPEC §5: sigmoid f' = y(1 − y), tanh f' = 1 − y², scaled tanh f' = (B/A)(A² − y²)."""
    x = rng.standard_normal((4, 5))
    dy = rng.standard_normal((4, 5))
    for layer, derivative in [
        (Sigmoid(), lambda y: y * (1 - y)),
        (Tanh(), lambda y: 1 - y**2),
        (ScaledTanh(), lambda y: (2 / 3) / 1.7159 * (1.7159**2 - y**2)),
    ]:
        y = layer.forward(x)
        np.testing.assert_allclose(layer.backward(dy), dy * derivative(y), atol=1e-14)


def test_scaled_tanh_maps_one_to_about_one():
    y = ScaledTanh().forward(np.array([[-1.0, 1.0]]))
    np.testing.assert_allclose(y, [[-1.0, 1.0]], atol=2e-4)


@pytest.mark.parametrize("cls", ALL)
def test_input_and_upstream_gradient_are_left_unchanged(cls, rng):
    """Forward and backward compute in place only in arrays they create."""
    make, _ = _twins(pytest.importorskip("torch"))[cls]
    layer = make()
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x_before, dy_before = x.copy(), dy.copy()
    y = layer.forward(x)
    layer.backward(dy)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(dy, dy_before)
    assert not np.shares_memory(y, x)


@pytest.mark.parametrize("slope", [None, 0.2, -0.5, 0.0])
@pytest.mark.parametrize(
    "x", [np.array([-1.5, 0.0, 2.0]), np.array([[np.nan, -np.inf, -1.0, np.inf, 3.0]])]
)
def test_relu_and_leaky_relu_on_any_shape_and_non_finite_values_as_torch(slope, x):
    torch = pytest.importorskip("torch")
    if slope is None:
        layer, twin = ReLU(), torch.nn.ReLU()
    else:
        layer, twin = LeakyReLU(slope), torch.nn.LeakyReLU(slope)
    with np.errstate(invalid="ignore"):  # −∞·0 is NaN, as in PyTorch
        y = layer.forward(x)
    np.testing.assert_array_equal(y, twin(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parameter", [1.0, 0.7, 0.01, -0.5])
def test_leaky_relu_and_elu_equal_their_branch_definitions_bit_for_bit(parameter, dtype, rng):
    """They are computed without branches; the result must be what the branches give."""
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x[0, 0, :3] = 0.0  # the kink itself: u > 0 is false there
    dy = rng.standard_normal(x.shape).astype(dtype)
    a = dtype(parameter)
    branches = {
        LeakyReLU(parameter): (np.where(x > 0, x, x * a), np.where(x > 0, dy, dy * a)),
        ELU(parameter): (
            np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))),
            np.where(x > 0, dy, dy * (a * np.exp(np.minimum(x, 0)))),
        ),
    }
    for layer, (y, dx) in branches.items():
        np.testing.assert_array_equal(layer.forward(x), y)
        np.testing.assert_array_equal(layer.backward(dy), dx)


@pytest.mark.parametrize(
    "shape,block",
    [
        ((64, 32, 28, 28), (32, 28, 28)),
        ((5,), (5,)),
        ((2, 3, 200, 200), (200, 200)),
        ((1, 2**17), ()),
    ],
)
def test_the_zero_block_is_one_sample_at_most_and_never_large(shape, block):
    x = np.ones(shape, np.float32)
    zeros = activation._zero_block(x)
    assert zeros.shape == block and zeros.dtype == np.float32 and not zeros.any()
    assert zeros.size <= activation._ZERO_BLOCK_SIZE


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_elu_on_non_finite_values_as_torch(alpha):
    torch = pytest.importorskip("torch")
    x = np.array([[np.nan, -np.inf, -1.0, 0.0, np.inf, 3.0]], np.float32)
    np.testing.assert_array_equal(
        ELU(alpha).forward(x), torch.nn.ELU(alpha)(torch.from_numpy(x)).numpy()
    )


def test_extreme_inputs_do_not_overflow():
    x = np.array([[-1e4, 0.0, 1e4]], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        np.testing.assert_allclose(Sigmoid().forward(x), [[0.0, 0.5, 1.0]])
        np.testing.assert_allclose(Softmax().forward(x), [[0.0, 0.0, 1.0]])


def test_dtype_preserved_repr_and_errors(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    for cls in ALL:
        if isinstance(cls, str):  # a second configuration of a class already in ALL
            continue
        layer = cls()
        assert layer.forward(x).dtype == np.float32
        assert layer.backward(np.ones((2, 3), np.float32)).dtype == np.float32
        with pytest.raises(ValueError, match="floating-point"):
            layer.forward(np.zeros((2, 3), np.int64))
        with pytest.raises(RuntimeError, match="before forward"):
            cls().backward(x)
    assert repr(LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(ReLU()) == "ReLU()"
    relu = ReLU().eval()
    with relu.no_grad():
        relu.forward(x)
    assert relu._cache is None


# what a training forward keeps: one array, the least f' needs ("output", "input", "mask")
KEPT = {
    Sigmoid: "output",
    Tanh: "output",
    ScaledTanh: "output",
    ReLU: "output",
    LeakyReLU: "mask",
    ELU: "input",
    GELU: "input",
    "GELU-tanh": "input",
    Softmax: "output",
}


@pytest.mark.parametrize("cls", list(KEPT))
def test_forward_keeps_one_array_and_memory_estimate_says_which(cls, rng):
    layer = GELU("tanh") if cls == "GELU-tanh" else cls()
    x = rng.standard_normal((4, 3, 5, 5))
    y = layer.forward(x)
    (kept,) = layer._cache
    estimate = layer.memory_estimate(x.shape)
    if KEPT[cls] == "output":
        assert kept is y and estimate.keeps_output and not estimate.keeps_input
    elif KEPT[cls] == "input":
        assert kept is x and estimate.keeps_input and not estimate.keeps_output
    else:
        assert kept.dtype == bool and kept.nbytes == estimate.other_bytes == x.size
        assert not estimate.keeps_input and not estimate.keeps_output


@pytest.mark.parametrize("slope", [0.2, -0.5])
def test_leaky_relu_with_a_negative_slope_still_routes_by_the_input_sign(slope, rng):
    torch = pytest.importorskip("torch")
    layer = LeakyReLU(slope)
    assert_matches_torch(layer, torch.nn.LeakyReLU(slope), _kink_free(rng, (3, 7)), rng)


def test_exact_gelu_is_u_times_normal_cdf():
    x = np.array([-40.0, -8.0, -1.0, 0.0, 0.5, 3.0, 40.0])
    expected = [v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x]
    # rtol: rounding u/√2 moves erfc by up to 2(u²/2)·1e-16 relative (8e-15 at u = −8)
    np.testing.assert_allclose(GELU().forward(x), expected, rtol=1e-13, atol=0)


def test_gelu_default_is_exact_and_approximate_is_checked():
    assert GELU().approximate == "none" and repr(GELU("tanh")) == "GELU(approximate='tanh')"
    with pytest.raises(ValueError, match="approximate must be one of"):
        GELU("erf")
