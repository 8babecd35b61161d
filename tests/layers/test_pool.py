"""Windowed pools: finite differences, PyTorch parity, behaviour (DESIGN 3.6)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp.layers import (
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    LPPool1d,
    LPPool2d,
    LPPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
    WeightedAvgPool2d,
)

# (class, input shape, constructor arguments): batch 1, odd sizes, non-square kernels,
# overlap (kernel 3, stride 2), padding, dilation, ceil_mode with a smaller last window.
MAX_CASES = [
    (MaxPool1d, (2, 3, 11), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (MaxPool1d, (1, 1, 8), dict(kernel_size=2, padding=1, dilation=3)),
    (MaxPool2d, (1, 1, 5, 5), dict(kernel_size=2)),
    (MaxPool2d, (2, 3, 6, 8), dict(kernel_size=2)),  # windows tile the input
    (MaxPool2d, (2, 3, 7, 6), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))),
    (MaxPool2d, (1, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (MaxPool2d, (2, 1, 8, 7), dict(kernel_size=2, stride=1, padding=1, dilation=2)),
    (MaxPool2d, (1, 2, 6, 7), dict(kernel_size=3, stride=2, ceil_mode=True)),
    (
        MaxPool3d,
        (1, 2, 5, 4, 6),
        dict(kernel_size=(2, 3, 2), stride=(2, 1, 2), padding=(1, 1, 0), ceil_mode=True),
    ),
]
AVG_CASES = [
    (AvgPool1d, (2, 3, 11), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (
        AvgPool1d,
        (1, 1, 8),
        dict(kernel_size=4, stride=3, padding=2, ceil_mode=True, count_include_pad=False),
    ),
    (AvgPool2d, (1, 1, 5, 5), dict(kernel_size=2)),
    (AvgPool2d, (2, 3, 6, 8), dict(kernel_size=2)),  # windows tile the input
    (AvgPool3d, (1, 2, 4, 6, 2), dict(kernel_size=2, ceil_mode=True)),
    (AvgPool2d, (2, 3, 7, 6), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))),
    (
        AvgPool2d,
        (1, 2, 9, 9),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    ),
    (AvgPool2d, (1, 2, 6, 7), dict(kernel_size=3, stride=2, ceil_mode=True, divisor_override=4)),
    (
        AvgPool3d,
        (1, 2, 5, 4, 6),
        dict(kernel_size=(2, 3, 2), stride=(2, 1, 2), padding=(1, 1, 0), ceil_mode=True),
    ),
]
LP_CASES = [
    (LPPool1d, (2, 3, 11), dict(norm_type=2, kernel_size=3, stride=2, ceil_mode=True)),
    (LPPool2d, (1, 1, 5, 5), dict(norm_type=2, kernel_size=2)),
    (LPPool2d, (2, 1, 4, 6), dict(norm_type=2, kernel_size=(2, 3))),  # tiling
    (LPPool2d, (2, 3, 7, 6), dict(norm_type=3, kernel_size=(3, 2), stride=(2, 1))),
    (LPPool2d, (1, 2, 6, 7), dict(norm_type=1.5, kernel_size=3, stride=2, ceil_mode=True)),
    (
        LPPool3d,
        (1, 2, 5, 4, 6),
        dict(norm_type=2, kernel_size=(2, 3, 2), stride=(2, 1, 2), ceil_mode=True),
    ),
]
WEIGHTED_CASES = [
    (WeightedAvgPool2d, (1, 1, 5, 5), dict(kernel_size=2)),
    (
        WeightedAvgPool2d,
        (2, 3, 7, 6),
        dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), sigma=0.7),
    ),
    (
        WeightedAvgPool2d,
        (1, 2, 9, 8),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, sigma=2.0),
    ),
]
TORCH_MODULE_CASES = MAX_CASES + AVG_CASES + LP_CASES
ALL_CASES = TORCH_MODULE_CASES + WEIGHTED_CASES


def _case_id(case):
    cls, shape, kwargs = case
    return f"{cls.__name__}-{'x'.join(map(str, shape))}-" + ",".join(
        f"{k}={v}" for k, v in kwargs.items()
    )


def _make(cls, kwargs, dtype, rng):
    """The layer (pools have no parameters: dtype and rng only keep one call shape)."""
    return cls(**kwargs)


def _input(cls, shape, kwargs, dtype, rng):
    """Max: distinct values (unique argmax, no kink within eps); L^p with p != 2: positive."""
    if cls in (MaxPool1d, MaxPool2d, MaxPool3d):
        return (rng.permutation(int(np.prod(shape))).reshape(shape) / 16).astype(dtype)
    if cls in (LPPool1d, LPPool2d, LPPool3d) and kwargs["norm_type"] != 2:
        return rng.uniform(0.5, 1.5, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_gradients_match_finite_differences(case, rng):
    cls, shape, kwargs = case
    layer = _make(cls, kwargs, np.float64, rng)
    assert_gradients_match_numeric(layer, _input(cls, shape, kwargs, np.float64, rng))


def _weighted_twin(kwargs):
    """Gaussian-weighted average from torch primitives: a depthwise conv over the zero-padded
    input, divided by the same conv of a mask of the cells that count (renormalises ceil_mode's
    overhanging windows). The 2-D Gaussian is built directly, not as an outer product."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    kh, kw = (
        (kwargs["kernel_size"],) * 2
        if isinstance(kwargs["kernel_size"], int)
        else kwargs["kernel_size"]
    )
    stride = kwargs.get("stride", (kh, kw))
    ph, pw = (
        (kwargs.get("padding", 0),) * 2
        if isinstance(kwargs.get("padding", 0), int)
        else kwargs["padding"]
    )
    sigma = kwargs.get("sigma", 1.0)

    def twin(x, params):
        r_h = torch.arange(kh, dtype=x.dtype) - (kh - 1) / 2
        r_w = torch.arange(kw, dtype=x.dtype) - (kw - 1) / 2
        gauss = torch.exp(-(r_h[:, None] ** 2 + r_w[None, :] ** 2) / (2 * sigma**2))
        kernel = (gauss / gauss.sum())[None, None]
        out_h, out_w = F.avg_pool2d(
            x, (kh, kw), stride, (ph, pw), kwargs.get("ceil_mode", False)
        ).shape[2:]
        sh, sw = (stride,) * 2 if isinstance(stride, int) else stride
        extra_h = max(0, (out_h - 1) * sh + kh - x.shape[2] - 2 * ph)
        extra_w = max(0, (out_w - 1) * sw + kw - x.shape[3] - 2 * pw)
        x_padded = F.pad(x, (pw, pw + extra_w, ph, ph + extra_h))
        counted = F.pad(
            torch.ones((1, 1, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype),
            (0, extra_w, 0, extra_h),
        )
        channels = x.shape[1]
        total = F.conv2d(
            x_padded, kernel.expand(channels, 1, kh, kw), stride=stride, groups=channels
        )
        return total / F.conv2d(counted, kernel, stride=stride)

    return twin


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_matches_torch(case, dtype, rng):
    torch = pytest.importorskip("torch")
    cls, shape, kwargs = case
    if cls is WeightedAvgPool2d:
        twin = _weighted_twin(kwargs)
    else:
        twin = getattr(torch.nn, cls.__name__)(**kwargs)
    layer = _make(cls, kwargs, dtype, rng)
    assert_matches_torch(layer, twin, _input(cls, shape, kwargs, dtype, rng), rng)


# -- behaviour ----------------------------------------------------------------------------


def test_repr_shows_non_default_arguments():
    assert repr(MaxPool2d(2)) == "MaxPool2d(kernel_size=(2, 2))"
    assert (
        repr(MaxPool1d(3, 2, 1, dilation=2, ceil_mode=True))
        == "MaxPool1d(kernel_size=(3,), stride=(2,), padding=(1,), dilation=(2,), ceil_mode=True)"
    )
    assert (
        repr(AvgPool2d(3, 2, count_include_pad=False, divisor_override=2))
        == "AvgPool2d(kernel_size=(3, 3), stride=(2, 2), count_include_pad=False, "
        "divisor_override=2)"
    )
    assert repr(LPPool2d(2, (3, 2))) == "LPPool2d(norm_type=2.0, kernel_size=(3, 2))"
    assert (
        repr(WeightedAvgPool2d(3, sigma=0.5)) == "WeightedAvgPool2d(kernel_size=(3, 3), sigma=0.5)"
    )


@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_config_rebuilds_the_layer(case, rng):
    cls, _, kwargs = case
    layer = _make(cls, kwargs, np.float32, rng)
    config = json.loads(json.dumps(layer.config()))
    rebuilt = cls(**config)
    assert rebuilt.config() == layer.config()
    assert repr(rebuilt) == repr(layer)


def _first_case_of_each_class():
    seen = {}
    for case in ALL_CASES:
        seen.setdefault(case[0], case)
    return list(seen.values())


@pytest.mark.parametrize("case", _first_case_of_each_class(), ids=_case_id)
def test_backward_before_forward_raises(case, rng):
    cls, shape, kwargs = case
    layer = _make(cls, kwargs, np.float32, rng)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones((1,) * len(shape), dtype=np.float32))


@pytest.mark.parametrize("case", _first_case_of_each_class(), ids=_case_id)
def test_no_grad_keeps_nothing(case, rng):
    cls, shape, kwargs = case
    layer = _make(cls, kwargs, np.float32, rng)
    with layer.no_grad():
        y = layer.forward(_input(cls, shape, kwargs, np.float32, rng))
    assert layer._cache is None
    with pytest.raises(RuntimeError):
        layer.backward(np.ones_like(y))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", _first_case_of_each_class(), ids=_case_id)
def test_dtype_is_preserved(case, dtype, rng):
    cls, shape, kwargs = case
    layer = _make(cls, kwargs, dtype, rng)
    y = layer.forward(_input(cls, shape, kwargs, dtype, rng))
    dx = layer.backward(rng.standard_normal(y.shape).astype(dtype))
    assert y.dtype == dtype and dx.dtype == dtype and dx.shape == shape
    assert all(grad.dtype == dtype for grad in layer.grads.values())


@pytest.mark.parametrize("case", _first_case_of_each_class(), ids=_case_id)
def test_wrong_input_rank_or_dtype_is_rejected(case, rng):
    cls, shape, kwargs = case
    layer = _make(cls, kwargs, np.float32, rng)
    with pytest.raises(ValueError, match=cls.__name__):  # (C, *spatial) is one sample
        layer.forward(np.zeros(shape[2:], dtype=np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        layer.forward(np.zeros(shape, dtype=np.int64))


@pytest.mark.parametrize(
    "layer", [MaxPool2d(5), AvgPool2d(6, padding=1), LPPool1d(2, 7), WeightedAvgPool2d((2, 6))]
)
def test_kernel_larger_than_input_is_rejected(layer):
    shape = (1, 1, 3, 3)[: layer.nd + 2]
    with pytest.raises(
        ValueError, match=re.escape(f"larger than the padded input; input shape {shape}")
    ):
        layer.forward(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize(
    "build",
    [
        lambda: MaxPool2d(3, padding=2),
        lambda: AvgPool1d(2, padding=2),
        lambda: WeightedAvgPool2d(3, padding=(0, 2)),
        lambda: MaxPool2d(0),
        lambda: LPPool2d(0, 2),
        lambda: WeightedAvgPool2d(3, sigma=0.0),
        lambda: AvgPool2d(2, divisor_override=0),
    ],
)
def test_bad_arguments_are_rejected(build):
    with pytest.raises(ValueError):
        build()


def test_backward_rejects_a_wrongly_shaped_dy(rng):
    layer = AvgPool2d(2)
    layer.forward(rng.standard_normal((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"dy of shape \(1, 1, 2, 2\)"):
        layer.backward(np.ones((1, 1, 3, 2)))


def test_max_pool_padding_never_wins(rng):
    x = -rng.uniform(1, 2, (2, 3, 5, 5))  # all negative: a zero pad cell would win
    y = MaxPool2d(3, stride=2, padding=1, ceil_mode=True).forward(x)
    assert (y < 0).all()


def test_avg_pool_divisor_rules_by_hand():
    # L = 6, kernel 3, stride 2, padding 1, ceil: windows [-1,2) [1,4) [3,6) [5,8); cell 6 is
    # right padding (counted with count_include_pad), cell 7 the ceil overhang (never counted)
    x = np.ones((1, 1, 6))
    y = AvgPool1d(3, 2, 1, ceil_mode=True).forward(x)
    np.testing.assert_allclose(y[0, 0], [2 / 3, 1, 1, 1 / 2])
    y = AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False).forward(x)
    np.testing.assert_allclose(y[0, 0], [1, 1, 1, 1])


def test_l2_pool_is_the_root_of_the_sum_of_squares(rng):
    x = rng.standard_normal((2, 3, 4, 6))  # negative inputs are fine for p = 2
    y = LPPool2d(2, 2).forward(x)
    blocks = x.reshape(2, 3, 2, 2, 3, 2)
    np.testing.assert_allclose(y, np.sqrt((blocks**2).sum(axis=(3, 5))), rtol=1e-12)


def test_lp_pool_gradient_is_zero_where_the_window_is_zero(rng):
    x = rng.uniform(0.5, 1.5, (1, 1, 4, 4))
    x[..., :2, :2] = 0.0
    layer = LPPool2d(2, 2)
    layer.forward(x)
    dx = layer.backward(rng.standard_normal((1, 1, 2, 2)))
    assert np.isfinite(dx).all()
    assert (dx[..., :2, :2] == 0).all() and (dx[..., 2:, 2:] != 0).all()


def test_weighted_avg_pool_weights_are_a_normalised_centred_gaussian(rng):
    layer = WeightedAvgPool2d(3, sigma=0.8)
    np.testing.assert_allclose(layer.forward(np.full((1, 2, 6, 6), 2.5)), 2.5)  # Σ w = 1
    impulse = np.zeros((1, 1, 3, 3))
    weights = []
    for cell in [(1, 1), (0, 1), (0, 0)]:  # centre, edge, corner
        impulse[...] = 0
        impulse[(0, 0, *cell)] = 1
        weights.append(layer.forward(impulse).item())
    gauss = np.exp(-np.array([0, 1, 2]) / (2 * 0.8**2))  # exp(−|r|²/2σ²), |r|² = 0, 1, 2
    total = (1 + 2 * gauss[1]) ** 2  # Σ over the 3×3 offsets r ∈ {−1, 0, 1}²
    np.testing.assert_allclose(weights, gauss / total, rtol=1e-12)
    x = rng.standard_normal((1, 2, 7, 7))
    wide = WeightedAvgPool2d(3, stride=2, sigma=1e4).forward(x)  # flat Gaussian: plain mean
    np.testing.assert_allclose(wide, AvgPool2d(3, stride=2).forward(x), rtol=1e-6)


@pytest.mark.parametrize("cls", [MaxPool1d, MaxPool2d, MaxPool3d])
@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((2, 2, 7, 6, 5), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
        ((2, 2, 6, 4, 8), dict(kernel_size=2)),  # windows tile the input
    ],
)
def test_max_pool_ties_go_to_the_first_cell_like_torch(cls, shape, kwargs, rng):
    torch = pytest.importorskip("torch")
    x = rng.integers(0, 3, shape[: cls.nd + 2]).astype(np.float64)  # many tied maxima
    assert_matches_torch(cls(**kwargs), getattr(torch.nn, cls.__name__)(**kwargs), x, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eval_mode", [False, True])
@pytest.mark.parametrize(
    "make", [lambda: MaxPool2d(2), lambda: AvgPool2d(2), lambda: LPPool2d(2, 2)]
)
def test_tiling_windows_give_what_the_general_path_gives(make, eval_mode, dtype, rng):
    """Windows that tile the input take shortcuts (no zeros pass, up() for the average);
    one more row and column that the windows skip sends the same input down the general
    path: identical outputs, identical gradients, zero gradient on the skipped cells."""
    wide = rng.integers(-2, 3, (2, 3, 7, 9)).astype(dtype)  # integers: ties in max pooling
    tiled = np.ascontiguousarray(wide[..., :6, :8])
    tiling, general = make(), make()
    if eval_mode:
        tiling.eval(), general.eval()
    y = tiling.forward(tiled)
    np.testing.assert_array_equal(y, general.forward(wide))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dx_wide = tiling.backward(dy), general.backward(dy)
    assert dx.dtype == dx_wide.dtype == dtype
    np.testing.assert_array_equal(dx, dx_wide[..., :6, :8])
    assert not dx_wide[..., 6, :].any() and not dx_wide[..., :, 8].any()


def test_exporter_surface_window_divisor_weights_and_overhang():
    """What exporters read: D(o) per input size, the weights w (None: plain average), and
    whether ceil_mode's last window hangs past the padded border."""
    layer = AvgPool1d(3, 2, 1, ceil_mode=True)  # L = 6: windows [-1,2) [1,4) [3,6) [5,8)
    np.testing.assert_array_equal(layer.window_divisor((6,)), [3, 3, 3, 2])
    assert layer.window_weights() is None and layer.nd == 1
    assert layer.overhangs((6,)) and not layer.overhangs((7,))
    assert layer.window_pads((6,)) == ((1, 2),)
    assert AvgPool2d(2, divisor_override=3).window_divisor((4, 4)) == 3
    weights = WeightedAvgPool2d(3, sigma=0.5).window_weights(np.float32)
    assert weights.shape == (3, 3) and weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)


def test_avg_pool_keeps_one_divisor_for_variable_input_sizes(rng):
    """The divisor cache holds the last input size only, and never serves a stale one."""
    layer = AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    for size in [*range(5, 40), 7, 5, 7]:
        x = rng.standard_normal((1, 2, size, size + 1))
        fresh = AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        np.testing.assert_array_equal(layer.forward(x), fresh.forward(x))
    assert layer._last_divisor[0] == ((7, 8), np.dtype(np.float64))  # one slot, not 35
