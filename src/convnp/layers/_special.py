"""The error function for NumPy arrays, accurate to float64 rounding (NumPy has none).

W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23
(1969) 631-637, as in Netlib SPECFUN's CALERF, in three ranges of |x|:

* |x| ≤ 0.46875:   erf(x)  = x · A(x²) / B(x²)
* 0.46875 < |x| ≤ 4: erfc(|x|) = e^(−x²) · C(|x|) / D(|x|)
* |x| > 4:         erfc(|x|) = e^(−x²) / |x| · (1/√π − z·P(z)/Q(z)),  z = 1/x²

e^(−x²) is computed as e^(−s²)·e^(−(|x|−s)(|x|+s)) with s = |x| rounded down to 1/16, so that
x² is never rounded before it is exponentiated (Cody's trick; it keeps the relative error of
erfc near 1e-16 far into the tail). erf = 1 − erfc outside the first range and
erfc(−x) = 2 − erfc(x).
"""

from __future__ import annotations

import numpy as np

_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)  # fmt: skip
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)  # fmt: skip
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)  # fmt: skip
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)  # fmt: skip
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)  # fmt: skip
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)  # fmt: skip
_ONE_OVER_SQRT_PI = 5.6418958354775628695e-1
_SMALL = 0.46875  # end of the first range
_LARGE = 4.0  # end of the second
_UNDERFLOW = 30.0  # erfc(30) ≈ 1e-393 rounds to 0 in float64


def _ratio(numerator: tuple, denominator: tuple, t: np.ndarray) -> np.ndarray:
    """Cody's R(t) = (Σ numerator·t^k) / (Σ denominator·t^k), with his nesting order: the
    last numerator coefficient leads and the denominator is monic."""
    n = len(denominator)
    top = numerator[n] * t
    bottom = t
    for a, b in zip(numerator[: n - 1], denominator[: n - 1]):
        top = (top + a) * t
        bottom = (bottom + b) * t
    return (top + numerator[n - 1]) / (bottom + denominator[n - 1])


def _erfc_of_magnitude(y: np.ndarray) -> np.ndarray:
    """erfc(y) for y > 0.46875 (second and third ranges)."""
    y = np.minimum(y, _UNDERFLOW)  # erfc is 0 in float64 from there on; keeps y² finite
    tail = y > _LARGE
    z = 1.0 / np.square(np.where(tail, y, 1.0))
    asymptotic = (_ONE_OVER_SQRT_PI - z * _ratio(_P, _Q, z)) / np.where(tail, y, 1.0)
    ratio = np.where(tail, asymptotic, _ratio(_C, _D, np.where(tail, 1.0, y)))
    rounded = np.floor(y * 16.0) / 16.0  # s: |x| to 1/16, so s² is exact
    gaussian = np.exp(-rounded * rounded) * np.exp(-(y - rounded) * (y + rounded))
    return gaussian * ratio


def erfc(x: np.ndarray) -> np.ndarray:
    """Complementary error function 1 − erf(x), element-wise, in float64."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):  # handled by np.where
        return _erfc(x)


def _erfc(x: np.ndarray) -> np.ndarray:
    y = np.abs(x)
    small = y <= _SMALL
    inner = np.where(small, x, 0.0)
    result = np.where(small, 1.0 - inner * _ratio(_A, _B, inner * inner), 0.0)
    outer = _erfc_of_magnitude(np.where(small, 1.0, y))
    result = np.where(small, result, np.where(x < 0, 2.0 - outer, outer))
    return np.where(np.isnan(x), np.nan, result)


def erf(x: np.ndarray) -> np.ndarray:
    """Error function (2/√π) ∫_0^x e^(−t²) dt, element-wise, in float64."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):  # handled by np.where
        return _erf(x)


def _erf(x: np.ndarray) -> np.ndarray:
    y = np.abs(x)
    small = y <= _SMALL
    inner = np.where(small, x, 0.0)
    outer = (0.5 - _erfc_of_magnitude(np.where(small, 1.0, y))) + 0.5  # 1 − erfc(|x|)
    result = np.where(small, inner * _ratio(_A, _B, inner * inner), np.copysign(outer, x))
    return np.where(np.isnan(x), np.nan, result)
