"""The error function (layers/_special.py) against the standard library's math.erf/erfc."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convnp.layers import _special

# every range of Cody's approximation and its borders, both signs, tiny to underflowing
_MAGNITUDES = np.concatenate(
    [
        np.logspace(-300, -1, 400),
        np.linspace(0.0, 6.0, 20001),
        np.nextafter(np.array([0.46875, 4.0]), [[0.0], [10.0]]).ravel(),
        [0.46875, 4.0, 10.0, 26.0, 26.5, 27.0, 40.0, 1e10, 1e308],
    ]
)
X = np.concatenate([_MAGNITUDES, -_MAGNITUDES])


def _ulps(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|error| in units of the reference's last place (0 where they agree exactly)."""
    error = np.abs(ours - reference)
    return np.where(error == 0, 0.0, error / np.spacing(np.abs(reference)))


def test_erf_matches_math_erf_to_a_few_ulps():
    reference = np.array([math.erf(v) for v in X])
    assert _ulps(_special.erf(X), reference).max() <= 4


def test_erfc_matches_math_erfc_to_a_few_ulps():
    reference = np.array([math.erfc(v) for v in X])
    normal = reference >= np.finfo(np.float64).tiny  # subnormal results have no full precision
    ours = _special.erfc(X)
    assert _ulps(ours[normal], reference[normal]).max() <= 8
    np.testing.assert_allclose(ours[~normal], reference[~normal], rtol=0, atol=1e-320)


def test_special_values():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(_special.erf(x), [0.0, -0.0, 1.0, -1.0, np.nan])
    np.testing.assert_array_equal(_special.erfc(x), [1.0, 1.0, 0.0, 2.0, np.nan])
    assert np.signbit(_special.erf(np.array(-0.0)))


@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4)])
def test_shape_kept(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    assert _special.erf(x).shape == shape and _special.erfc(x).shape == shape
