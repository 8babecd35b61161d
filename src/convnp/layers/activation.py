"""Element-wise activations f, as separate layers (SPEC §1, §5; DESIGN 3.2 decision 5).

Each layer computes y = f(u) and its backward returns ∂E/∂u = ∂E/∂y ∘ f'(u). A training
forward keeps one array, the least that f' needs (``memory_estimate`` says which):

=================================  =============================================
Sigmoid, Tanh, ScaledTanh, ReLU    the output y (f' from y, SPEC §5: sigmoid f' = y(1 − y);
                                   ReLU: u > 0 ⇔ y > 0). The layer after (conv, linear)
                                   keeps the same array as its input, so it costs nothing
                                   extra there.
LeakyReLU                          the mask u > 0 (1 byte per element)
ELU, GELU                          the input u (f' needs u; y is not kept)
Softmax                            the output y
=================================  =============================================
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from convnp.layers import _special
from convnp.layers.base import Layer, MemoryEstimate


class _Elementwise(Layer):
    """y = f(u) element-wise; forward keeps one array (``_keep``: the output y by default),
    backward returns dy ∘ f'(·) from it."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        y = self._f(x)
        self._remember(self._keep(x, y))
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (kept,) = self._recall()
        dy = self._check_grad_output(dy, kept.shape)
        return self._dy_times_derivative(dy, kept)

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        return MemoryEstimate(keeps_output=True)

    def _keep(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y

    def _f(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _dy_times_derivative(self, dy: np.ndarray, kept: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _KeepsInput(_Elementwise):
    """An activation whose f' needs the input u itself."""

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        return MemoryEstimate(keeps_input=True)

    def _keep(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x


class Sigmoid(_Elementwise):
    """Logistic sigmoid: y = 1 / (1 + e^(−u)),  f'(u) = y(1 − y) (SPEC §1, §5).

    Computed as written. For u below about −88 (float32; −709 in float64) e^(−u) overflows
    to +inf and 1 / (1 + inf) = 0, the correct limit, so the overflow is not reported.
    Measured against (1 + tanh(u/2)) / 2 (float32, 1 thread, 86k values, AVX2): 187 against
    274 µs, as NumPy's exp is faster than its tanh; and far into the negative tail it keeps
    its relative accuracy (2e-7 against 13), where the tanh form rounds to 0 from u ≈ −18.
    """

    def _f(self, x: np.ndarray) -> np.ndarray:
        y = np.negative(x)  # the one new array; the rest in place
        with np.errstate(over="ignore"):
            np.exp(y, out=y)
        y += 1
        np.divide(1, y, out=y)
        return y

    def _dy_times_derivative(self, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx = np.subtract(1, y)  # f' = y(1 − y), in one new array
        dx *= y
        dx *= dy
        return dx


class Tanh(_Elementwise):
    """Hyperbolic tangent: y = tanh(u),  f'(u) = 1 − y² (SPEC §1)."""

    def _f(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x)

    def _dy_times_derivative(self, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx = np.multiply(y, y)  # f' = 1 − y², in one new array
        np.subtract(1, dx, out=dx)
        dx *= dy
        return dx


class ScaledTanh(_Elementwise):
    """LeCun's scaled tanh: y = A·tanh(B·u), A = 1.7159, B = 2/3 (SPEC §1).

    f'(u) = A·B·(1 − tanh²(B·u)) = (B/A)·(A² − y²), from the stored output.
    A and B make f(±1) ≈ ±1, so ±1 targets sit in the non-saturated range.
    """

    A = 1.7159
    B = 2.0 / 3.0

    def _f(self, x: np.ndarray) -> np.ndarray:
        y = np.multiply(x, x.dtype.type(self.B))  # A·tanh(B·u), in one new array
        np.tanh(y, out=y)
        y *= x.dtype.type(self.A)
        return y

    def _dy_times_derivative(self, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx = np.multiply(y, y)  # f' = (B/A)(A² − y²), in one new array
        np.subtract(y.dtype.type(self.A * self.A), dx, out=dx)
        dx *= y.dtype.type(self.B / self.A)
        dx *= dy
        return dx


# Largest block of zeros _zero_block makes (elements): 256 KiB of float32.
_ZERO_BLOCK_SIZE = 2**16


def _zero_block(x: np.ndarray) -> np.ndarray:
    """Zeros over x's trailing axes, for max(u, 0) / min(u, 0) broadcast over the rest:
    NumPy's SIMD maximum and minimum need two arrays (array-scalar runs a plain loop,
    measured 2x slower: ReLU of 64x32x28x28 float32, 0.63 -> 0.29 ms, 1 thread). One sample
    (the batch axis dropped) or, for a sample above _ZERO_BLOCK_SIZE elements, fewer
    trailing axes: the block never takes more memory than that."""
    start = 1 if x.ndim > 1 else 0  # no batch axis to drop from a vector
    while math.prod(x.shape[start:]) > _ZERO_BLOCK_SIZE:
        start += 1  # ends at () at the latest: a scalar zero
    return np.zeros(x.shape[start:], dtype=x.dtype)


def _two_valued(mask: np.ndarray, if_true: float, if_false: float, dtype: Any) -> np.ndarray:
    """``if_true`` where mask, ``if_false`` elsewhere: [m]·t + (1 − [m])·f, exact for finite
    t and f since one term is zero. np.where branches per element and a lookup table (take)
    indexes per element: measured 12x and 2.5x slower (1.6M float32 values, 1 thread)."""
    on = mask.astype(dtype)  # [m] as 1.0 / 0.0
    values = np.subtract(1, on)
    values *= dtype.type(if_false)
    if if_true != 1:
        on *= dtype.type(if_true)
    values += on
    return values


class ReLU(_Elementwise):
    """Rectified linear unit: y = max(u, 0),  f'(u) = [y > 0] (SPEC §1)."""

    def _f(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, _zero_block(x))

    def _dy_times_derivative(self, dy: np.ndarray, y: np.ndarray) -> np.ndarray:
        # f' = 1 where u > 0, i.e. where y > 0: written as 1.0/0.0 straight into dx, then
        # times dy in place (no boolean mask temporary)
        dx = np.greater(y, 0, out=np.empty_like(dy))
        dx *= dy
        return dx


class LeakyReLU(_Elementwise):
    """y = u for u > 0, else a·u  (a = negative_slope);  f'(u) = 1 or a.

    Keeps the mask u > 0 (1 byte per element): y's sign gives it only when a ≥ 0.
    Computed without np.where, whose per-element branch on random signs is 4-6x slower
    (measured, layer alone, 64x32x28x28 float32, 1 thread: forward 6.7 -> 1.5-1.8 ms,
    backward 6.3 -> 1.0-1.2 ms):
    y = max(u, 0) + a·min(u, 0), exact (one term is zero), and f' = 1 or a from the mask
    (``_two_valued``).
    """

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}

    def _f(self, x: np.ndarray) -> np.ndarray:
        zeros = _zero_block(x)
        y = np.minimum(x, zeros)  # y = a·min(u, 0) + max(u, 0)
        y *= x.dtype.type(self.negative_slope)
        y += np.maximum(x, zeros)
        return y

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        return MemoryEstimate(other_bytes=int(np.prod(input_shape)))  # the bool mask

    def _keep(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x > 0

    def _dy_times_derivative(self, dy: np.ndarray, positive: np.ndarray) -> np.ndarray:
        dx = _two_valued(positive, 1, self.negative_slope, dy.dtype)  # f' = 1 or a
        dx *= dy
        return dx


class ELU(_KeepsInput):
    """y = u for u > 0, else α(e^u − 1);  f'(u) = 1, or α·e^u for u ≤ 0 (from the input,
    kept instead of y: y's sign gives u > 0 only for α > 0).

    Without np.where (a per-element branch, slow on random signs; see LeakyReLU), exactly:
    y = max(u, 0) + α·expm1(min(u, 0)) (one term is zero) and f'(u) = e^min(u, 0) · s(u)
    with s = 1 for u > 0 (where e^0 = 1), α otherwise.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _f(self, x: np.ndarray) -> np.ndarray:
        zeros = _zero_block(x)
        y = np.expm1(np.minimum(x, zeros))  # y = α·expm1(min(u, 0)) + max(u, 0)
        y *= x.dtype.type(self.alpha)
        y += np.maximum(x, zeros)
        return y

    def _dy_times_derivative(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        dx = np.exp(np.minimum(x, _zero_block(x)))  # f' = e^min(u, 0) · s(u)
        dx *= _two_valued(np.greater(x, 0), 1, self.alpha, dy.dtype)
        dx *= dy
        return dx


class GELU(_KeepsInput):
    """Gaussian error linear unit, y = u·Φ(u) (PyTorch's ``GELU``), exact or in tanh form.

    approximate="none" (PyTorch's default), with Φ the standard normal distribution function:
        y = u · Φ(u),   Φ(u) = ½ erfc(−u/√2)
        f'(u) = Φ(u) + u · φ(u),   φ(u) = e^(−u²/2) / √(2π)
    (erfc from ``_special``: Cody's rational approximations, accurate to float64 rounding;
    erfc rather than 1 + erf keeps Φ accurate for large negative u.)
    approximate="tanh":
        y = u/2 · (1 + tanh(s)),  s = √(2/π)·(u + 0.044715·u³)
        f'(u) = (1 + tanh s)/2 + u/2 · (1 − tanh² s) · √(2/π)·(1 + 3·0.044715·u²)

    Args:
        approximate: "none" or "tanh", as PyTorch.
    """

    _C = float(np.sqrt(2.0 / np.pi))
    _K = 0.044715
    _APPROXIMATIONS = ("none", "tanh")

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in self._APPROXIMATIONS:
            raise ValueError(
                f"GELU: approximate must be one of {self._APPROXIMATIONS}, got {approximate!r}"
            )
        self.approximate = approximate

    def config(self) -> dict[str, Any]:
        return {"approximate": self.approximate}

    @staticmethod
    def _normal_cdf(x: np.ndarray) -> np.ndarray:
        return (0.5 * _special.erfc(-x * np.sqrt(0.5))).astype(x.dtype)  # Φ(u)

    def _f(self, x: np.ndarray) -> np.ndarray:
        if self.approximate == "none":
            return x * self._normal_cdf(x)  # u·Φ(u)
        t = np.tanh(x.dtype.type(self._C) * (x + x.dtype.type(self._K) * x**3))
        return x * (1 + t) * x.dtype.type(0.5)

    def _dy_times_derivative(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        if self.approximate == "none":
            density = np.exp(-0.5 * x * x) * x.dtype.type(1.0 / np.sqrt(2.0 * np.pi))  # φ(u)
            return dy * (self._normal_cdf(x) + x * density)  # Φ(u) + u·φ(u)
        c, k = x.dtype.type(self._C), x.dtype.type(self._K)
        t = np.tanh(c * (x + k * x**3))
        ds_du = c * (1 + 3 * k * x * x)
        return dy * ((1 + t) * x.dtype.type(0.5) + x * x.dtype.type(0.5) * (1 - t * t) * ds_du)


class Softmax(Layer):
    """Softmax over the class axis: y_k = e^(u_k − max u) / Σ_c e^(u_c − max u) (SPEC §1).

    Subtracting the max first keeps large scores from overflowing. Backward (Jacobian
    diag(y) − y yᵀ applied to dy): ∂E/∂u = y ∘ (dy − Σ_k dy_k y_k). For training a classifier
    prefer ``CrossEntropyLoss`` on the logits, which fuses this with the loss (dL/dv = a − y).
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = int(dim)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        return MemoryEstimate(keeps_output=True)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"{self!r}: dim {self.dim} out of range for input shape {x.shape}")
        shifted = x - x.max(axis=self.dim, keepdims=True)  # u − max u
        y = np.exp(shifted)
        y /= y.sum(axis=self.dim, keepdims=True)
        self._remember(y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (y,) = self._recall()
        dy = self._check_grad_output(dy, y.shape)
        return y * (dy - (dy * y).sum(axis=self.dim, keepdims=True))
