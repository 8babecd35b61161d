"""Adaptive and global pools: finite differences, PyTorch parity, behaviour (DESIGN 3.6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp.layers.adaptive_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
    GlobalAvgPool2d,
    GlobalMaxPool2d,
)

# (input shape, output_size): bins that divide evenly, that overlap (out does not divide L),
# more bins than cells, None entries (keep that axis), a single global bin, batch 1.
CASES_1D = [((2, 3, 10), 4), ((1, 2, 7), 7), ((2, 1, 5), 8), ((1, 2, 9), 3)]
CASES_2D = [
    ((2, 3, 7, 9), (3, 4)),
    ((1, 2, 8, 6), 4),
    ((2, 1, 5, 6), (None, 4)),
    ((1, 2, 3, 4), (5, 7)),
    ((2, 2, 6, 5), 1),
]
CASES_3D = [((1, 2, 5, 6, 7), (2, 3, None)), ((2, 1, 4, 4, 5), 2)]
CASES = (
    [(cls, *case) for cls in (AdaptiveAvgPool1d, AdaptiveMaxPool1d) for case in CASES_1D]
    + [(cls, *case) for cls in (AdaptiveAvgPool2d, AdaptiveMaxPool2d) for case in CASES_2D]
    + [(cls, *case) for cls in (AdaptiveAvgPool3d, AdaptiveMaxPool3d) for case in CASES_3D]
)
GLOBAL_CASES = [(GlobalAvgPool2d, AdaptiveAvgPool2d), (GlobalMaxPool2d, AdaptiveMaxPool2d)]
MAX_CLASSES = (AdaptiveMaxPool1d, AdaptiveMaxPool2d, AdaptiveMaxPool3d, GlobalMaxPool2d)


def _case_id(case):
    cls, shape, output_size = case
    return f"{cls.__name__}-{'x'.join(map(str, shape))}-{output_size}"


def _input(cls, shape, dtype, rng):
    """Max: distinct values, so every bin's argmax is unique and stable under eps."""
    if cls in MAX_CLASSES:
        return (rng.permutation(int(np.prod(shape))).reshape(shape) / 16).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gradients_match_finite_differences(case, rng):
    cls, shape, output_size = case
    assert_gradients_match_numeric(cls(output_size), _input(cls, shape, np.float64, rng))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_torch(case, dtype, rng):
    torch = pytest.importorskip("torch")
    cls, shape, output_size = case
    twin = getattr(torch.nn, cls.__name__)(output_size)
    assert_matches_torch(cls(output_size), twin, _input(cls, shape, dtype, rng), rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("cls", "adaptive"), GLOBAL_CASES)
def test_global_pools_match_torch_and_reduce_whole_maps(cls, adaptive, dtype, rng):
    torch = pytest.importorskip("torch")
    x = _input(cls, (2, 3, 5, 4), dtype, rng)
    assert_matches_torch(cls(), getattr(torch.nn, adaptive.__name__)(1), x, rng)
    reduce = np.max if cls is GlobalMaxPool2d else np.mean
    y = cls().forward(x)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y, reduce(x, axis=(2, 3), keepdims=True), rtol=1e-6)
    assert_gradients_match_numeric(cls(), x.astype(np.float64))


# -- behaviour ----------------------------------------------------------------------------


def test_repr():
    assert repr(AdaptiveAvgPool2d((None, 3))) == "AdaptiveAvgPool2d(output_size=(None, 3))"
    assert repr(AdaptiveMaxPool1d(3)) == "AdaptiveMaxPool1d(output_size=3)"
    assert repr(AdaptiveAvgPool3d([2, 1, 2])) == "AdaptiveAvgPool3d(output_size=(2, 1, 2))"
    assert repr(GlobalAvgPool2d()) == "GlobalAvgPool2d()"
    assert repr(GlobalMaxPool2d()) == "GlobalMaxPool2d()"


@pytest.mark.parametrize(
    "layer",
    [AdaptiveAvgPool2d((None, 3)), AdaptiveMaxPool1d(3), AdaptiveAvgPool3d(2), GlobalMaxPool2d()],
    ids=repr,
)
def test_config_rebuilds_the_layer(layer):
    config = json.loads(json.dumps(layer.config()))
    rebuilt = type(layer)(**config)
    assert rebuilt.config() == layer.config() and repr(rebuilt) == repr(layer)


def test_none_keeps_the_input_size(rng):
    layer = AdaptiveMaxPool2d((None, 2))
    assert layer.output_shape((7, 9)) == (7, 2)
    assert layer.forward(rng.standard_normal((1, 1, 7, 9))).shape == (1, 1, 7, 2)


def test_overlapping_bins_follow_pytorchs_rule():
    # L = 5, 3 bins: [0, 2), [1, 4), [3, 5) (start = floor(iL/out), end = ceil((i+1)L/out))
    x = np.arange(5.0).reshape(1, 1, 5)
    np.testing.assert_allclose(AdaptiveAvgPool1d(3).forward(x)[0, 0], [0.5, 2.0, 3.5])
    np.testing.assert_allclose(AdaptiveMaxPool1d(3).forward(x)[0, 0], [1.0, 3.0, 4.0])


@pytest.mark.parametrize("output_size", [0, (2, -1), (2, 2, 2), "7"])
def test_bad_output_size_is_rejected(output_size):
    with pytest.raises((ValueError, TypeError)):
        AdaptiveAvgPool2d(output_size)


ALL_LAYERS = [
    AdaptiveAvgPool1d(2),
    AdaptiveAvgPool2d((2, 3)),
    AdaptiveAvgPool3d(2),
    AdaptiveMaxPool1d(2),
    AdaptiveMaxPool2d((2, 3)),
    AdaptiveMaxPool3d(2),
    GlobalAvgPool2d(),
    GlobalMaxPool2d(),
]


def _shape(layer):
    return (2, 3, 5, 6, 7)[: layer.nd + 2]


@pytest.mark.parametrize("layer", ALL_LAYERS, ids=repr)
def test_backward_before_forward_raises(layer):
    with pytest.raises(RuntimeError, match="before forward"):
        type(layer)(**layer.config()).backward(np.ones((1, 1, 1), dtype=np.float32))


@pytest.mark.parametrize("layer", ALL_LAYERS, ids=repr)
def test_no_grad_keeps_nothing(layer, rng):
    layer = type(layer)(**layer.config())
    with layer.no_grad():
        y = layer.forward(rng.standard_normal(_shape(layer)))
    assert layer._cache is None
    with pytest.raises(RuntimeError):
        layer.backward(np.ones_like(y))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", ALL_LAYERS, ids=repr)
def test_dtype_is_preserved(layer, dtype, rng):
    x = rng.standard_normal(_shape(layer)).astype(dtype)
    y = layer.forward(x)
    dx = layer.backward(rng.standard_normal(y.shape).astype(dtype))
    assert y.dtype == dtype and dx.dtype == dtype and dx.shape == x.shape


@pytest.mark.parametrize("layer", ALL_LAYERS, ids=repr)
def test_bad_input_is_rejected(layer):
    shape = _shape(layer)
    with pytest.raises(ValueError, match=type(layer).__name__):  # (C, *spatial) is one sample
        layer.forward(np.zeros(shape[2:], dtype=np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        layer.forward(np.zeros(shape, dtype=np.int32))
    with pytest.raises(ValueError, match="empty spatial axis"):
        layer.forward(np.zeros((*shape[:-1], 0), dtype=np.float32))


def test_backward_rejects_a_wrongly_shaped_dy(rng):
    layer = AdaptiveAvgPool2d(2)
    layer.forward(rng.standard_normal((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"dy of shape \(1, 1, 2, 2\)"):
        layer.backward(np.ones((1, 1, 3, 2)))


@pytest.mark.parametrize(
    ("cls", "output_size"),
    [(AdaptiveMaxPool1d, 3), (AdaptiveMaxPool2d, (3, 4)), (AdaptiveMaxPool3d, 2)],
)
def test_adaptive_max_ties_go_to_the_first_cell_like_torch(cls, output_size, rng):
    torch = pytest.importorskip("torch")
    x = rng.integers(0, 3, (2, 2, 7, 6, 5)[: cls.nd + 2]).astype(np.float64)  # tied maxima
    assert_matches_torch(cls(output_size), getattr(torch.nn, cls.__name__)(output_size), x, rng)
