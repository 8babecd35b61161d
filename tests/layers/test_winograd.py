"""Winograd F(2x2, 3x3) beneath conv_forward / conv_transpose: equal to the im2col path,
to PyTorch, and to finite differences through Conv2d."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp.layers import Conv2d, _conv_ops, _winograd
from convnp.layers._conv_ops import ConvGeometry, Workspace


@pytest.fixture
def any_size(monkeypatch):
    """F(2x2, 3x3) for every qualifying geometry, however few maps and tiles (the size
    thresholds are about speed, not correctness)."""
    monkeypatch.setattr(_winograd, "MIN_MAPS", 1)
    monkeypatch.setattr(_winograd, "MIN_TILES", 1)


def _geometry(pads):
    return ConvGeometry((3, 3), (1, 1), pads, (1, 1))


def _random_case(rng, dtype):
    n, c, o = (int(v) for v in rng.integers(1, 6, size=3))
    pads = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(2))
    spatial = tuple(int(rng.integers(max(1, 3 - b - a), 12)) for b, a in pads)  # odd and even
    x = rng.standard_normal((n, c, *spatial)).astype(dtype)
    weight = rng.standard_normal((o, c, 3, 3)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    return _geometry(pads), x, weight, bias


def _assert_equal(ours, theirs, dtype, name):
    scale = float(np.abs(theirs).max(initial=1.0))
    tolerance = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=tolerance * scale, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_and_input_gradient_equal_the_im2col_path(dtype, rng, any_size):
    """Random shapes (batch 1 to 5, odd and even sizes, paddings 0-2 on each side, asymmetric):
    the same output and ∂E/∂x as _conv_ops to rounding (float64 ~1e-12 of the scale)."""
    for _ in range(40):
        geometry, x, weight, bias = _random_case(rng, dtype)
        o, c = weight.shape[:2]
        assert _winograd.applies(geometry, 1, x.shape, o, x.itemsize, 2**23)
        y = _winograd.conv_forward(x, weight, bias, geometry)
        _assert_equal(y, _conv_ops.conv_forward(x, weight, bias, geometry), dtype, "forward")
        assert y.dtype == dtype and y.flags.c_contiguous
        dy = rng.standard_normal(y.shape).astype(dtype)
        spatial = x.shape[2:]
        dx = _winograd.conv_transpose(dy, weight, geometry, spatial)
        expected = _conv_ops.conv_transpose(dy, weight, geometry, spatial)
        _assert_equal(dx, expected, dtype, "input gradient")
        assert dx.dtype == dtype and dx.shape == x.shape


def test_chunks_runs_and_reused_buffers(rng, monkeypatch, any_size):
    """Several chunks of samples (a small workspace limit), several uneven runs of tile rows
    (small RUN_BYTES), and scratch buffers left full of NaN by the previous call: the same
    results (only the input's parity copy is zero-filled; the rest is overwritten)."""
    geometry = _geometry(((1, 1), (0, 2)))
    x = rng.standard_normal((7, 3, 9, 8))
    weight = rng.standard_normal((4, 3, 3, 3))
    bias = rng.standard_normal(4)
    dy = rng.standard_normal((7, 4, 9, 8))
    expected = (
        _conv_ops.conv_forward(x, weight, bias, geometry),
        _conv_ops.conv_transpose(dy, weight, geometry, x.shape[2:]),
    )
    monkeypatch.setattr(_winograd, "RUN_BYTES", 32_000)  # 5 tile rows in runs of 2, 2, 1
    workspace = Workspace(16_500)  # the forward's 7 samples in chunks of 3, 3, 1
    plan = _winograd._Plan(x.shape[1:], 4, geometry.pads, 8)
    assert plan.samples(7, workspace.limit_bytes) == 3 and plan.rows(3) == 2
    for _ in range(2):
        got = (
            _winograd.conv_forward(x, weight, bias, geometry, workspace=workspace),
            _winograd.conv_transpose(dy, weight, geometry, x.shape[2:], workspace=workspace),
        )
        for ours, theirs in zip(got, expected):
            _assert_equal(ours, theirs, np.float64, "chunked")
        for scratch in workspace._sets:
            for buffer in scratch._buffers.values():
                buffer.fill(0xFF)  # NaN bytes


@pytest.mark.parametrize(
    "padding, flip_kernel, dtype",
    [(1, False, np.float32), (0, True, np.float64), ((2, 1), False, np.float64)],
)
def test_conv2d_on_the_winograd_path_matches_torch(padding, flip_kernel, dtype, rng, any_size):
    torch = pytest.importorskip("torch")
    layer = Conv2d(5, 6, 3, padding=padding, flip_kernel=flip_kernel, dtype=dtype, rng=rng)
    x = rng.standard_normal((3, 5, 9, 10)).astype(dtype)
    assert _winograd.applies(layer.geometry, 1, x.shape, 6, x.itemsize, 2**23)

    def twin(x_t, params):
        weight = params["weight"]
        if flip_kernel:
            weight = torch.flip(weight, dims=(2, 3))
        return torch.nn.functional.conv2d(x_t, weight, params["bias"], padding=layer.padding)

    assert_matches_torch(layer, twin, x, rng)


def test_modern_sized_conv2d_takes_the_winograd_path_and_matches_torch(rng, monkeypatch):
    """At its real thresholds: 16 -> 32 maps, 14x14, batch 4 (196 tiles) qualifies, and the
    forward and ∂E/∂x go through F(2x2, 3x3)."""
    torch = pytest.importorskip("torch")
    calls = []
    correlate = _winograd._correlate
    monkeypatch.setattr(_winograd, "_correlate", lambda *args: calls.append(1) or correlate(*args))
    layer = Conv2d(16, 32, 3, padding=1, rng=rng)
    twin = torch.nn.Conv2d(16, 32, 3, padding=1, dtype=torch.float32)
    assert_matches_torch(layer, twin, rng.standard_normal((4, 16, 14, 14)).astype(np.float32), rng)
    assert len(calls) == 2  # forward and input gradient
    calls.clear()
    layer.forward(rng.standard_normal((1, 16, 14, 14)).astype(np.float32))  # 49 tiles: im2col
    assert not calls


def test_conv2d_gradients_on_the_winograd_path_match_finite_differences(rng, any_size):
    layer = Conv2d(3, 4, 3, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 7, 6))
    assert _winograd.applies(layer.geometry, 1, x.shape, 4, 8, 2**23)
    assert_gradients_match_numeric(layer, x)


@pytest.mark.parametrize(
    "kernel, stride, dilation, groups, padding",
    [(3, 2, 1, 1, 1), (3, 1, 2, 1, 2), (3, 1, 1, 2, 1), (5, 1, 1, 1, 2), ((3, 1), 1, 1, 1, 1)],
)
def test_other_geometries_stay_on_the_im2col_path(kernel, stride, dilation, groups, padding):
    layer = Conv2d(32, 32, kernel, stride, padding, dilation, groups)
    x_shape = (64, 32, 14, 14)
    assert not _winograd.applies(layer.geometry, groups, x_shape, 32, 4, 2**23)
    big_padding = _geometry(((3, 3), (1, 1)))  # the input gradient would need −1
    assert not _winograd.applies(big_padding, 1, x_shape, 32, 4, 2**23)


def test_memory_estimate_counts_the_winograd_buffers(rng):
    layer = Conv2d(16, 32, 3, padding=1, rng=rng)
    x = rng.standard_normal((8, 16, 14, 14)).astype(np.float32)
    estimate = layer.memory_estimate(x.shape)
    y = layer.forward(x)
    layer.backward(np.ones_like(y))
    held = layer.workspace.nbytes
    assert 0.9 * estimate.workspace_bytes <= held <= estimate.workspace_bytes
