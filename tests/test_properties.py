"""Properties the SPEC states, checked on real images (the bundled mnist5k digits).

* Equivariance (SPEC §2): shifting the input shifts a convolution's output by the same
  amount, away from the borders; with stride s an input shift of s·k moves the output by k.
* Approximate invariance (SPEC §3): after max pooling, more outputs stay exactly the same
  under a one-pixel shift than before it.
* A locally connected layer keeps the connectivity but not the sharing (SPEC §6), so it is
  not equivariant.
* Variable-size inputs (SPEC §3): a fully convolutional classifier (one map per class,
  averaged globally) accepts any input size; built bias-free with "full" padding and
  ceil-mode pooling, pasting the image onto a bigger zero canvas only rescales its scores.
"""

from __future__ import annotations

import numpy as np
import pytest

from convnp.data import load_dataset
from convnp.layers import (
    Conv1d,
    Conv2d,
    Conv3d,
    Flatten,
    GlobalAvgPool2d,
    LocallyConnected2d,
    MaxPool2d,
    ReLU,
)
from convnp.model import Sequential


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Twelve real 28x28 digits as float64 in [0, 1], shape (12, 1, 28, 28)."""
    images = load_dataset("mnist5k").train_images[:12]
    return images.astype(np.float64) / 255.0


def _signals(digits: np.ndarray, nd: int) -> np.ndarray:
    """Real data with nd spatial axes: 1-D digits read row by row (N, 1, 784), 2-D digits,
    3-D volumes of four consecutive digits stacked in depth (N/4, 1, 4, 28, 28)."""
    if nd == 1:
        return digits.reshape(len(digits), 1, -1)
    if nd == 2:
        return digits
    return digits.reshape(-1, 4, 28, 28)[:, None]


# (class, kernel, stride, dilation, output shift k per axis)
CONVS = [
    (Conv1d, 5, 1, 1, 3),
    (Conv1d, 3, 2, 3, 4),  # input shift 2·4 = 8 moves the strided output by 4
    (Conv2d, 3, 1, 1, 2),
    (Conv2d, (3, 5), (2, 1), 1, 2),
    (Conv2d, 3, 1, 2, 1),
    (Conv2d, 4, 3, 1, 1),
    (Conv3d, (2, 3, 3), 1, 1, 1),
    (Conv3d, 3, (1, 2, 2), (1, 2, 1), 1),
]


@pytest.mark.parametrize("cls,kernel,stride,dilation,k", CONVS)
def test_convolution_is_translation_equivariant(digits, cls, kernel, stride, dilation, k, rng):
    """conv(shift_t x) = shift_k conv(x) with t = stride·k, exactly, on the common region."""
    nd = cls.nd
    x = _signals(digits, nd)
    conv = cls(1, 3, kernel, stride, 0, dilation, dtype=np.float64, rng=rng)
    strides = conv.stride
    shifted = x[(Ellipsis, *(slice(s * k, None) for s in strides))]  # content moves by s·k
    y = conv.forward(x)
    y_shifted = conv.forward(shifted)
    expected = y[(Ellipsis, *(slice(k, None) for _ in strides))]
    assert y_shifted.shape == expected.shape
    np.testing.assert_allclose(y_shifted, expected, atol=1e-12)
    assert np.abs(y_shifted).max() > 0.1  # the digits reach the compared region


@pytest.mark.parametrize("cls", [Conv1d, Conv2d, Conv3d])
def test_padded_convolution_is_equivariant_away_from_the_borders(digits, cls, rng):
    nd = cls.nd
    x = _signals(digits, nd)
    conv = cls(1, 2, 3, padding="same", dtype=np.float64, rng=rng)
    axes = tuple(range(2, 2 + nd))
    shifted = np.roll(x, 1, axis=axes)
    y = conv.forward(x)
    y_shifted = conv.forward(shifted)
    interior = (Ellipsis, *(slice(2, -1) for _ in axes))
    np.testing.assert_allclose(y_shifted[interior], np.roll(y, 1, axis=axes)[interior], atol=1e-12)
    assert not np.allclose(y_shifted, y)


def test_locally_connected_layer_is_not_equivariant(digits, rng):
    """Same windows as a conv but one kernel per position: a shift does not commute."""
    local = LocallyConnected2d(1, 3, (26, 26), 3, dtype=np.float64, rng=rng)
    x = digits[:, :, 1:27, 1:27]
    shifted = digits[:, :, 2:28, 2:28]
    y = local.forward(x)
    y_shifted = local.forward(shifted)
    assert not np.allclose(y_shifted[:, :, :-1, :-1], y[:, :, 1:, 1:], atol=1e-3)


def _fraction_unchanged(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the outputs that are equal, among those not zero in both (the background of
    a digit is zero everywhere and would count as unchanged for free)."""
    active = (a != 0) | (b != 0)
    return float(np.mean(np.isclose(a, b, rtol=0, atol=1e-12)[active]))


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 1), (3, 2), (4, 4)])
@pytest.mark.parametrize("axis", [2, 3])
def test_max_pooling_is_approximately_invariant_to_small_shifts(digits, kernel, stride, axis, rng):
    # no bias: the background stays exactly zero and is left out of the comparison
    conv = Conv2d(1, 8, 3, padding=1, bias=False, dtype=np.float64, rng=rng)
    moved_digits = np.roll(digits, 1, axis=axis)
    pool = MaxPool2d(kernel, stride)
    for image, moved in [
        (digits, moved_digits),  # the pixels themselves
        (np.maximum(conv.forward(digits), 0), np.maximum(conv.forward(moved_digits), 0)),
    ]:
        before = _fraction_unchanged(image, moved)
        after = _fraction_unchanged(pool.forward(image), pool.forward(moved))
        assert after > before + 0.1, (before, after)


def test_fully_convolutional_scores_only_rescale_on_a_bigger_canvas(digits, rng):
    """Bias-free ReLU maps are 0 over pure background, and "full" padding with ceil-mode
    pooling already computes every position the digit reaches: a canvas 2·4k wider adds only
    zeros, so the global averages shrink by the area ratio and the argmax cannot change."""
    model = Sequential(
        Conv2d(1, 6, 3, padding="full", bias=False, dtype=np.float64, rng=rng),
        ReLU(),
        MaxPool2d(2, ceil_mode=True),
        Conv2d(6, 8, 3, padding="full", bias=False, dtype=np.float64, rng=rng),
        ReLU(),
        MaxPool2d(2, ceil_mode=True),
        Conv2d(8, 10, 3, padding="full", bias=False, dtype=np.float64, rng=rng),
        GlobalAvgPool2d(),
        Flatten(),
    )

    def bigger_at(size: int) -> int:
        """Number of positions each class map averages over, for a size×size input."""
        return int(np.prod(model.output_shapes((1, size, size))[-3][1:]))

    scores = model.predict(digits)
    area = bigger_at(28)
    for margin in (4, 8):  # a multiple of the total pooling stride 4
        canvas = np.pad(digits, ((0, 0), (0, 0), (margin, margin), (margin, margin)))
        rescaled = model.predict(canvas) * bigger_at(28 + 2 * margin) / area
        np.testing.assert_allclose(rescaled, scores, atol=1e-12)
    # same 36x36 canvas, offset (3, 5): off the pooling grid, so only approximately equal
    shifted = np.pad(digits, ((0, 0), (0, 0), (3, 5), (5, 3)))
    rescaled = model.predict(shifted) * bigger_at(36) / area
    assert not np.allclose(rescaled, scores, atol=1e-6)
