"""The layer protocol of layers/base.py: input validation (cheap, the same everywhere), the
explicit NaN/inf check, the one-slot cache, parameters and dtype, argument helpers."""

from __future__ import annotations

import numpy as np
import pytest

from convnp.layers.base import (
    Layer,
    NonFiniteInputError,
    all_finite,
    as_tuple,
    check_finite,
    first_non_finite,
    map_sums,
    surely_finite,
    uniform_init,
)


class Scale(Layer):
    """y = w · x with one learnable (C,) weight: the smallest layer with a parameter."""

    def __init__(self, channels: int, dtype=np.float32) -> None:
        super().__init__()
        self._add_param("weight", np.arange(1, channels + 1, dtype=dtype))

    def forward(self, x):
        x = self._check_input(
            x, ndim=(2, 4), layout="(N, C, ...)", channels=self.params["weight"].size
        )
        self._remember(x)
        return x * self.params["weight"].reshape(-1, *(1,) * (x.ndim - 2))

    def backward(self, dy):
        (x,) = self._recall()
        dy = self._check_grad_output(dy, x.shape)
        axes = (0, *range(2, x.ndim))
        self.grads["weight"][...] = (dy * x).sum(axis=axes)
        return dy * self.params["weight"].reshape(-1, *(1,) * (x.ndim - 2))


def test_check_input_names_the_layer_and_the_problem():
    layer = Scale(3)
    with pytest.raises(ValueError, match=r"Scale\(\): expected a NumPy array, got list"):
        layer.forward([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"expected input \(N, C, \.\.\.\), got shape \(3,\)"):
        layer.forward(np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"got shape \(2, 4\)"):
        layer.forward(np.ones((2, 4), np.float32))  # wrong channel count
    with pytest.raises(ValueError, match=r"floating-point input, got dtype uint8.*astype"):
        layer.forward(np.ones((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"dtype float64 does not match parameter dtype float32"):
        layer.forward(np.ones((2, 3), np.float64))


def test_layers_do_not_scan_values_the_model_entry_does():
    """Validation reads shapes and dtypes only, the same inside and outside a network; the
    O(size) NaN/inf scan is ``check_finite``, run once by ``Sequential.forward``."""
    bad = np.array([[1.0, np.nan, np.inf]], np.float32)
    y = Scale(3).forward(bad)
    assert np.isnan(y[0, 1]) and np.isinf(y[0, 2])
    with pytest.raises(NonFiniteInputError, match=r"where: input of shape \(1, 3\) contains NaN"):
        check_finite(bad, "where")
    assert issubclass(NonFiniteInputError, ValueError)
    finite = np.ones((2, 3))
    assert check_finite(finite, "where") is finite
    assert check_finite(np.empty((0, 3)), "where").size == 0


@pytest.mark.parametrize("size", [5, 70_000])  # both of all_finite's scans: small, large
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_and_first_non_finite_find_any_bad_value(size, dtype, bad):
    for position in (0, size // 2, size - 1):
        x = np.ones(size, dtype)
        assert all_finite(x)
        x[position] = bad
        assert not all_finite(x)
        assert first_non_finite({"a": np.ones(3, dtype), "b": x, "c": x}) == "b"
    assert first_non_finite({"a": np.ones(3, dtype), "i": np.ones(2, np.int64)}) is None


@pytest.mark.parametrize("size", [5, 70_000])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex128])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_surely_finite_never_passes_a_bad_value(size, dtype, bad):
    """The training step's quick check: any NaN or inf, in any array, in any position, of
    any layout (a transposed view too) gives False; all-finite arrays give True."""

    def arrays():
        return [np.ones((3, 1, 2), dtype), np.ones(size, dtype), np.ones((4, 3), dtype).T]

    assert surely_finite([*arrays(), np.ones(2, np.int64)])
    assert surely_finite([])
    for index in range(3):
        for fraction in (0, 0.5, 1):
            bad_arrays = arrays()
            array = bad_arrays[index]
            array.flat[int(fraction * (array.size - 1))] = bad
            assert not surely_finite(bad_arrays)


def test_surely_finite_false_alarm_on_overflow_is_cleared_by_first_non_finite():
    """Huge finite values overflow the sum of squares: False, but nothing is NaN or inf."""
    huge = {"w": np.full(3, 1e30, np.float32)}
    assert not surely_finite(huge.values())
    assert first_non_finite(huge) is None
    assert surely_finite([np.full(3, 60000, np.float16)])  # half: no squares, no alarm


def test_one_slot_cache_backward_before_forward_eval_mode_and_no_grad(rng):
    layer = Scale(2, dtype=np.float64)
    with pytest.raises(RuntimeError, match=r"Scale\(\): backward\(\) called before forward\(\)"):
        layer.backward(np.ones((1, 2)))
    x = rng.standard_normal((4, 2))
    layer.forward(x)
    layer.forward(2 * x)  # overwrites: backward uses the last forward
    dy = rng.standard_normal((4, 2))
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["weight"], (dy * 2 * x).sum(axis=0))
    with pytest.raises(ValueError, match=r"backward expected dy of shape \(4, 2\), got \(4, 3\)"):
        layer.backward(np.ones((4, 3)))
    assert layer.eval() is layer and not layer.training
    layer.forward(x)  # eval mode keeps what backward needs, as PyTorch
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["weight"], (dy * x).sum(axis=0))
    with layer.no_grad() as same:
        assert same is layer and not layer.grad_enabled
        layer.forward(x)
    assert layer.grad_enabled  # restored
    assert layer._cache is None  # no_grad keeps nothing (and dropped the previous cache)
    with pytest.raises(RuntimeError, match=r"within no_grad\(\)"):
        layer.backward(dy)


def test_parameters_dtype_and_astype():
    layer = Scale(3)
    assert layer.dtype == np.float32 and layer.num_parameters() == 3
    assert layer.grads["weight"].shape == (3,) and not layer.grads["weight"].any()
    layer.forward(np.ones((1, 3), np.float32))
    weight = layer.params["weight"]
    assert layer.astype(np.float64) is layer
    assert all(store["weight"].dtype == np.float64 for store in (layer.params, layer.grads))
    assert layer.params["weight"] is not weight  # rebinds: build optimizers afterwards
    assert layer._cache is None
    assert Layer().dtype is None and Layer().num_parameters() == 0
    assert repr(Layer()) == "Layer()" and Layer().config() == {}


def test_as_tuple_expands_and_validates():
    assert as_tuple(3, 2, "kernel_size") == (3, 3)
    assert as_tuple(np.int64(2), 3, "stride") == (2, 2, 2)
    assert as_tuple([1, 2], 2, "padding") == (1, 2)
    with pytest.raises(ValueError, match=r"kernel_size must be an int or a sequence of 2 ints"):
        as_tuple((1, 2, 3), 2, "kernel_size")


def test_uniform_init_is_bounded_seeded_and_typed():
    a = uniform_init(np.random.default_rng(0), (50, 40), 0.25, np.float32)
    b = uniform_init(np.random.default_rng(0), (50, 40), 0.25, np.float32)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and np.abs(a).max() <= 0.25 and np.abs(a).max() > 0.2
    per_row = uniform_init(np.random.default_rng(1), (2, 1000), np.array([[1.0], [0.01]]), float)
    assert np.abs(per_row[1]).max() <= 0.01 < np.abs(per_row[0]).max()


@pytest.mark.parametrize(
    "shape", [(3, 4, 5), (2, 3, 4, 5), (2, 2, 3, 3, 2), (1, 1, 1, 1), (0, 3, 4, 4), (2, 3, 0, 4)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_map_sums_equals_the_sums_over_samples_and_positions(shape, dtype):
    rng = np.random.default_rng(len(shape))
    a, b = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    axes = (0, *range(2, len(shape)))
    bound = 1e-5 if dtype == np.float32 else 1e-12
    for got, expected in (
        (map_sums(a), a.astype(np.float64).sum(axis=axes)),
        (map_sums(a, b), (a.astype(np.float64) * b).sum(axis=axes)),
    ):
        assert got.shape == (shape[1],) and got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=bound, atol=bound)


def test_map_sums_of_strided_views():
    a = np.random.default_rng(0).standard_normal((4, 6, 8, 8))
    view, other = a[:, ::2, 1::2, ::3], a[:, 1::2, ::2, 1::3]  # not contiguous
    np.testing.assert_allclose(map_sums(view), view.sum(axis=(0, 2, 3)), rtol=1e-12)
    products = (view * other).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(map_sums(view, other), products, rtol=1e-12)
