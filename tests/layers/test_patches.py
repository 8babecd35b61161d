"""The two patch-matrix layouts (layers/_patches.py) give the same convolution.

ShiftedPatches (stride 1, flat shifted images with unused columns) must agree with
StridedPatches (the general im2col) on the three products a convolution takes from them:
the output W @ matrix, the weight gradient δ @ matrixᵀ and the input gradient
scatter(Wᵀ @ δ), for 1-D, 2-D and 3-D inputs, padding (including uneven 'same') and dilation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from convnp.layers import _patches, _windows

# (spatial, kernel, padding, dilation)
GEOMETRIES = [
    ((11,), (3,), "valid", (1,)),
    ((9,), (4,), "same", (2,)),
    ((7, 6), (3, 2), "same", (1, 1)),
    ((8, 9), (3, 3), "full", (2, 1)),
    ((6, 5), (1, 3), (0, 1), (1, 1)),
    ((5, 6, 4), (2, 3, 2), (1, 1, 0), (1, 1, 1)),
]


@pytest.mark.parametrize("spatial, kernel, padding, dilation", GEOMETRIES)
def test_shifted_patches_match_strided(spatial, kernel, padding, dilation):
    rng = np.random.default_rng(len(spatial) * 100 + sum(spatial))
    batch, channels, out_channels = 3, 2, 4
    x = rng.standard_normal((batch, channels, *spatial))
    pads = _windows.resolve_padding(padding, kernel, dilation)
    stride = (1,) * len(spatial)
    out_shape = tuple(
        _windows.output_size(s, k, 1, before, after, d)
        for s, k, (before, after), d in zip(spatial, kernel, pads, dilation)
    )
    weight = rng.standard_normal((out_channels, channels * math.prod(kernel)))
    dy = rng.standard_normal((batch, out_channels, *out_shape))

    shifted = _patches.ShiftedPatches(x, pads, kernel, dilation, out_shape)
    strided = _patches.StridedPatches(x, pads, kernel, stride, dilation, out_shape)
    assert shifted.matrix.shape[1] >= strided.matrix.shape[1]  # unused columns only add

    results = []
    for patches in (shifted, strided):
        output = patches.to_output(weight @ patches.matrix)
        delta = patches.from_output(dy)
        weight_grad = patches.matrix @ delta.T
        input_grad = patches.scatter(weight.T @ delta)
        results.append((output, weight_grad, input_grad))
    for got, expected in zip(*results):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert results[0][0].shape == (batch, out_channels, *out_shape)
    assert results[0][2].shape == x.shape


def test_stride_one_uses_shifted_layout_and_larger_strides_the_general_one():
    x = np.zeros((1, 1, 6, 6))
    pads = ((0, 0), (0, 0))
    assert isinstance(
        _patches.patches(x, pads, (3, 3), (1, 1), (1, 1), (4, 4)), _patches.ShiftedPatches
    )
    assert isinstance(
        _patches.patches(x, pads, (3, 3), (2, 1), (1, 1), (2, 4)), _patches.StridedPatches
    )
