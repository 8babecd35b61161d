"""Windowed pooling (SPEC §3, §5): max, average, L^p, Gaussian-weighted average
(Bouvrie's trained subsampling is in ``subsample.py``). One N-d implementation per kind;
1d/2d/3d classes only set ``nd``.

In the equations W(x) is the windows of the padded input, W(x)(o, k) = x_pad(o·s + k·d)
(``_windows.windows``, a view), and Wᵀ its adjoint (``_windows.scatter_windows``); max
pooling's gradient goes to each window's winning cell (``_windows.scatter_max_windows``).
Padding and ``ceil_mode`` follow PyTorch exactly: padding is at most half the kernel, and
with ``ceil_mode`` the last window may hang past the padded border (the smaller last window
of overlapping pooling, SPEC §3); the input is padded extra on the right so it exists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from convnp.layers import _windows
from convnp.layers.base import LAYOUTS, Layer, as_tuple, optional_batch_axis


class _PoolNd(Layer):
    """Window geometry shared by the sliding pools: kernel, stride, padding, dilation, ceil."""

    nd = 0  #: number of spatial axes (set by the 1d/2d/3d classes)
    _arguments: tuple[str, ...] = ()  # constructor arguments in order: the keys of config()

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None,
        padding: int | Sequence[int],
        dilation: int | Sequence[int],
        ceil_mode: bool,
    ) -> None:
        super().__init__()
        nd = self.nd
        name = type(self).__name__
        self.kernel_size = as_tuple(kernel_size, nd, "kernel_size")
        self.stride = self.kernel_size if stride is None else as_tuple(stride, nd, "stride")
        self.padding = as_tuple(padding, nd, "padding")
        self.dilation = as_tuple(dilation, nd, "dilation")
        self.ceil_mode = bool(ceil_mode)
        if min(self.kernel_size + self.stride + self.dilation) < 1:
            raise ValueError(f"{name}: kernel_size, stride and dilation must be >= 1")
        if any(p < 0 or p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"{name}: padding must be between 0 and half the kernel size (PyTorch's rule), "
                f"got padding={self.padding} for kernel_size={self.kernel_size}"
            )
        # (input spatial size, output_shape, window_pads) of the last input: one slot, so
        # variable-size inputs cannot grow it (the two cost ~3.5 us of Python per forward)
        self._last_geometry: tuple[tuple[int, ...], tuple[int, ...], tuple] | None = None

    def config(self) -> dict[str, Any]:
        values = {key: getattr(self, key) for key in self._arguments}
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in values.items()
            if value is not None  # an unset divisor_override stays out (AvgPool1d has none)
        }

    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(
            _windows.output_size(size, k, s, p, p, d, self.ceil_mode)
            for size, k, s, p, d in zip(
                spatial, self.kernel_size, self.stride, self.padding, self.dilation
            )
        )

    def _geometry(self, spatial: tuple[int, ...]) -> tuple[tuple[int, ...], tuple]:
        """``output_shape`` and ``window_pads`` for this input size, kept for the next call."""
        slot = self._last_geometry  # read once: inference blocks may run on several threads
        if slot is None or slot[0] != spatial:
            slot = (spatial, self.output_shape(spatial), self.window_pads(spatial))
            self._last_geometry = slot
        return slot[1], slot[2]

    def _validated(self, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        """Check x and return it with the output spatial shape (ValueError if it is empty)."""
        x = self._check_input(x, ndim=self.nd + 2, layout=LAYOUTS[self.nd])
        out_shape = self._geometry(x.shape[2:])[0]
        if min(out_shape) < 1:
            extent = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
            raise ValueError(
                f"{self!r}: kernel (extent {extent}) is larger than the padded input; "
                f"input shape {x.shape}, padding {self.padding}"
            )
        return x, out_shape

    def window_pads(self, spatial: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """(before, after) padding per axis under which floor rounding gives this layer's
        windows: ``padding``, plus on the right whatever ceil_mode's last window overhangs."""
        return tuple(
            (p, max(p, (o - 1) * s + d * (k - 1) + 1 - size - p))
            for size, o, k, s, p, d in zip(
                spatial,
                self.output_shape(spatial),
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
            )
        )

    def overhangs(self, spatial: tuple[int, ...]) -> bool:
        """True when, for this input size, a ceil_mode window hangs past the padded border
        (``window_pads`` then pads more after than ``padding``)."""
        pads = self.window_pads(spatial)
        return any(after > p for (_, after), p in zip(pads, self.padding))

    def _pad(self, x: np.ndarray, fill: float) -> np.ndarray:
        return _windows.pad_spatial(x, self._geometry(x.shape[2:])[1], fill)

    def _crop(self, dx_padded: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
        return _windows.crop_spatial(dx_padded, tuple((p, p) for p in self.padding), spatial)

    def _patches(self, x_padded: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
        return _windows.windows(x_padded, self.kernel_size, self.stride, self.dilation, out_shape)

    def _hidden_defaults(self) -> dict[str, Any]:
        """Constructor arguments left out of the repr while they hold these values."""
        nd = self.nd
        return {
            "stride": list(self.kernel_size),
            "padding": [0] * nd,
            "dilation": [1] * nd,
            "ceil_mode": False,
            "return_indices": False,
            "count_include_pad": True,
            "sigma": 1.0,
        }

    def extra_repr(self) -> str:
        hidden = self._hidden_defaults()
        return ", ".join(
            f"{key}={tuple(value) if isinstance(value, list) else value!r}"
            for key, value in self.config().items()
            if key not in hidden or value != hidden[key]
        )


class _MaxPoolNd(_PoolNd):
    """Max pooling (SPEC §3).

    Forward:   y(o) = max_k W(x)(o, k),   W(x)(o, k) = x_pad(o·s + k·d),  padding with −∞
    Backward:  ∂E/∂x(i) = Σ_{o: i wins window o} dy(o)
    The forward keeps only the winning k per window (not a mask of ties); ties go to the
    first cell in row-major window order, as in PyTorch.

    Args:
        kernel_size, stride (default kernel_size), padding (at most half the kernel),
        dilation, ceil_mode: as ``torch.nn.MaxPool2d``.
        return_indices: forward returns (y, indices), indices (int64, y's shape) holding
            each winner's flat position i in its input plane (N, C fixed, padding not
            counted), as PyTorch; ``MaxUnpool`` takes them. backward still takes dy only.

    Shape:
        input (N, C, *spatial) -> output (N, C, *out), out by PyTorch's Shape formula.
    """

    _arguments = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.return_indices = bool(return_indices)

    def forward(self, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        x, out_shape = self._validated(x)
        x_padded = self._pad(x, -np.inf)  # −∞: a pad cell must never win the max
        patches = self._patches(x_padded, out_shape)  # W(x)
        with_argmax = self.grad_enabled or self.return_indices  # backward needs it
        y, argmax = _windows.max_over_windows(patches, self.nd, with_argmax=with_argmax)
        self._remember(argmax, x_padded.shape, x.shape[2:])
        if self.return_indices:
            return y, self._input_indices(argmax, x.shape[2:])
        return y

    def _input_indices(self, argmax: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
        """Flat index in the input plane of each window's winner: per axis a, the winner
        sits at o_a·s_a + k_a·d_a − p_a, k = the winning kernel offset."""
        offsets = np.unravel_index(argmax, self.kernel_size)
        flat = np.zeros(argmax.shape, dtype=np.int64)
        for axis, offset in enumerate(offsets):
            out = np.arange(argmax.shape[2 + axis]).reshape((-1,) + (1,) * (self.nd - 1 - axis))
            position = out * self.stride[axis] + offset * self.dilation[axis] - self.padding[axis]
            flat = flat * spatial[axis] + position  # row-major over the input plane
        return flat

    def backward(self, dy: np.ndarray) -> np.ndarray:
        argmax, padded_shape, spatial = self._recall()
        dy = self._check_grad_output(dy, argmax.shape)
        dx_padded = _windows.scatter_max_windows(  # dy(o) -> the winner of window o
            dy, argmax, padded_shape, self.kernel_size, self.stride, self.dilation
        )
        return self._crop(dx_padded, spatial)


class _AvgPoolNd(_PoolNd):
    """Average pooling with PyTorch's divisor rules (SPEC §3).

    Forward:   y(o) = Σ_k w_k · W(x)(o, k) / D(o),   zero padding, w_k = 1
    Backward:  ∂E/∂x = Wᵀ( dy(o) / D(o) · w_k ),     the adjoint of the window sum
    D(o) (``window_divisor``) is ``divisor_override`` if given, else the number of window
    cells inside the padded input (count_include_pad=True; cells of a ceil_mode window past
    the padded border are not counted) or inside the input only (False). Both are a product
    over axes of 1-D counts. Subclasses change the weights w (``window_weights``); D then
    sums w instead of counting.

    Args:
        kernel_size, stride (default kernel_size), padding (at most half the kernel),
        ceil_mode, count_include_pad, divisor_override: as ``torch.nn.AvgPool2d``.

    Shape:
        input (N, C, *spatial) -> output (N, C, *out), out by PyTorch's Shape formula.
    """

    _arguments = (
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
    )

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        if divisor_override is not None and int(divisor_override) < 1:
            raise ValueError(f"{type(self).__name__}: divisor_override must be a positive int")
        self.divisor_override = None if divisor_override is None else int(divisor_override)
        # D(o) of the last input size and dtype, (key, value): one slot, so variable-size
        # inputs cannot grow it; building D costs ~0.1 ms of Python per forward otherwise
        self._last_divisor: tuple[tuple, Any] | None = None

    def _axis_weights(self) -> list[np.ndarray] | None:
        """Per-axis factors of the window weights w (w = their outer product); None: w = 1."""
        return None

    def window_weights(self, dtype: Any = np.float64) -> np.ndarray | None:
        """The weights w_k over the kernel (shape ``kernel_size``), or None when every w_k is
        1 (a plain average). Exporters read them."""
        axis_weights = self._axis_weights()
        if axis_weights is None:
            return None
        return functools.reduce(np.multiply.outer, axis_weights).astype(dtype)

    def window_divisor(self, spatial: tuple[int, ...]) -> np.ndarray | int:
        """D(o) for an input of this spatial size: ``divisor_override``, or an array over the
        output grid, the sum of w over the cells of window o that count (a product of
        per-axis sums). Exporters read it."""
        if self.divisor_override is not None:
            return self.divisor_override
        axis_weights = self._axis_weights() or [np.ones(k) for k in self.kernel_size]
        out_shape = self.output_shape(spatial)
        factors = []
        for size, o, s, p, w in zip(spatial, out_shape, self.stride, self.padding, axis_weights):
            cell = np.arange(o)[:, None] * s - p + np.arange(len(w))  # input coordinate
            # pad cells count or not; cells of ceil_mode's overhang never do
            low, high = (-p, size + p) if self.count_include_pad else (0, size)
            counted = (cell >= low) & (cell < high)
            factors.append((counted * w).sum(axis=1))
        return functools.reduce(np.multiply.outer, factors)

    def _divisor(self, spatial: tuple[int, ...], dtype: Any) -> Any:
        """``window_divisor`` in ``dtype``, a scalar when every window shares it; kept for
        the next call with the same input size."""
        key = (spatial, np.dtype(dtype))
        slot = self._last_divisor  # read once: inference blocks may run on several threads
        if slot is None or slot[0] != key:
            divisor = np.asarray(self.window_divisor(spatial), dtype=dtype)
            uniform = divisor.size and (divisor == divisor.flat[0]).all()
            slot = self._last_divisor = (key, divisor.flat[0] if uniform else divisor)
        return slot[1]

    def _average(self, x: np.ndarray, out_shape: tuple[int, ...]) -> tuple[np.ndarray, tuple]:
        """y(o) = Σ_k w_k W(x)(o, k) / D(o), and what ``_average_backward`` needs."""
        x_padded = self._pad(x, 0.0)
        divisor = self._divisor(x.shape[2:], x.dtype)
        patches = self._patches(x_padded, out_shape)  # W(x)
        window_sum = _windows.sum_windows(patches, self.nd, self.window_weights(x.dtype))
        window_sum /= divisor  # in place: the sum is a new array
        return window_sum, (x_padded.shape, x.shape[2:], out_shape, divisor)

    def _average_backward(self, dy: np.ndarray, geometry: tuple) -> np.ndarray:
        """∂E/∂x = Wᵀ( dy(o) / D(o) · w_k )."""
        padded_shape, spatial, out_shape, divisor = geometry
        dy = self._check_grad_output(dy, (*padded_shape[:2], *out_shape))
        dwindow_sum = dy / divisor
        weights = self.window_weights(dy.dtype)
        if weights is None:  # every cell of a window gets the same share
            dx_padded = _windows.spread_windows(
                dwindow_sum, padded_shape, self.kernel_size, self.stride, self.dilation
            )
        else:
            expanded = dwindow_sum.reshape(dwindow_sum.shape + (1,) * self.nd)
            dx_padded = _windows.scatter_windows(
                expanded * weights, padded_shape, self.stride, self.dilation
            )
        return self._crop(dx_padded, spatial)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x, out_shape = self._validated(x)
        y, geometry = self._average(x, out_shape)
        self._remember(geometry)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (geometry,) = self._recall()
        return self._average_backward(dy, geometry)


class _LPPoolNd(_AvgPoolNd):
    """Power-average (L^p) pooling; p = 2 is SPEC §3's L2 pool, sqrt of the sum of squares.

    Forward, exactly as PyTorch computes it:
        f(o) = avg_pool(x^p)(o),   y(o) = (K · f(o))^(1/p),   K = kernel cells
    so a full window gives y = (Σ_k x_k^p)^(1/p); a ceil_mode last window of m < K cells gives
    (K/m · Σ_k x_k^p)^(1/p) (PyTorch's scaling, kept for parity). x^p is a plain power, so
    negative x is fine for even p; a negative sum (odd p) or negative x with fractional p
    gives NaN, as in PyTorch.
    Backward:
        ∂E/∂f = dy · y / (p · f),   ∂E/∂x = avg_pool_backward(∂E/∂f) · p · x^(p-1)
    Where f = 0 the derivative does not exist; we use 0, the minimal-norm subgradient of a
    norm at 0 (and what PyTorch 2.x returns), so no division by zero occurs.

    Args:
        norm_type: p > 0 (finite; for p = ∞ use a max pool of |x|).
        kernel_size, stride (default kernel_size), ceil_mode: as ``torch.nn.LPPool2d``.
    """

    _arguments = ("norm_type", "kernel_size", "stride", "ceil_mode")

    def __init__(
        self,
        norm_type: float,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__(kernel_size, stride, 0, ceil_mode)
        if not (math.isfinite(norm_type) and norm_type > 0):
            raise ValueError(f"{type(self).__name__}: norm_type must be finite and > 0")
        self.norm_type = float(norm_type)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x, out_shape = self._validated(x)
        p = self.norm_type
        f, geometry = self._average(x**p, out_shape)
        y = (math.prod(self.kernel_size) * f) ** (1.0 / p)  # (K · avg(x^p))^(1/p)
        self._remember(x, y, f, geometry)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, y, f, geometry = self._recall()
        dy = self._check_grad_output(dy, y.shape)
        p = self.norm_type
        df = np.divide(dy * y, p * f, out=np.zeros_like(f), where=f != 0)  # 0 where f = 0
        return self._average_backward(df, geometry) * (p * x ** (p - 1))


class _WeightedAvgPoolNd(_AvgPoolNd):
    """Average weighted by distance from the window centre (SPEC §3), fixed Gaussian weights.

    Forward:   y(o) = Σ_k w_k · x_pad(o·s + k) / Z(o),
               w_k = exp(−|k − c|² / 2σ²) / Σ_k' exp(−|k' − c|² / 2σ²),  c = (kernel − 1) / 2
    Z(o) = 1 for a full window; a ceil_mode window hanging past the padded border is
    renormalised over the cells it covers (Z(o) = Σ of their w), like AvgPool's clipped
    divisor. Zero padding counts as cells (count_include_pad). The weights are not trained.
    Backward:  ∂E/∂x = scatter_o( dy(o) / Z(o) · w )

    Args:
        kernel_size, stride (default kernel_size), padding (at most half the kernel),
        ceil_mode: as ``torch.nn.AvgPool2d``.
        sigma: width of the Gaussian in cells (> 0); large sigma tends to AvgPool.
    """

    _arguments = ("kernel_size", "stride", "padding", "ceil_mode", "sigma")

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        ceil_mode: bool = False,
        sigma: float = 1.0,
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"{type(self).__name__}: sigma must be finite and > 0, got {sigma}")
        self.sigma = float(sigma)

    def _axis_weights(self) -> list[np.ndarray]:
        """exp(−|r|²/2σ²) = Π_a exp(−r_a²/2σ²): the isotropic Gaussian factors per axis."""
        factors = []
        for k in self.kernel_size:
            r = np.arange(k) - (k - 1) / 2
            g = np.exp(-(r**2) / (2 * self.sigma**2))
            factors.append(g / g.sum())  # normalising each factor normalises their product
        return factors


@optional_batch_axis
class MaxPool1d(_MaxPoolNd):
    """Max pooling over (N, C, L). See _MaxPoolNd."""

    nd = 1


@optional_batch_axis
class MaxPool2d(_MaxPoolNd):
    """Max pooling over (N, C, H, W), −∞ padding (SPEC §3). See _MaxPoolNd."""

    nd = 2


@optional_batch_axis
class MaxPool3d(_MaxPoolNd):
    """Max pooling over (N, C, D, H, W). See _MaxPoolNd."""

    nd = 3


@optional_batch_axis
class AvgPool1d(_AvgPoolNd):
    """Average pooling over (N, C, L); like PyTorch, no divisor_override. See _AvgPoolNd."""

    nd = 1

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)


@optional_batch_axis
class AvgPool2d(_AvgPoolNd):
    """Average pooling over (N, C, H, W) with PyTorch's divisor rules (SPEC §3). See _AvgPoolNd."""

    nd = 2


@optional_batch_axis
class AvgPool3d(_AvgPoolNd):
    """Average pooling over (N, C, D, H, W). See _AvgPoolNd."""

    nd = 3


@optional_batch_axis
class LPPool1d(_LPPoolNd):
    """Power-average pooling over (N, C, L). See _LPPoolNd."""

    nd = 1


@optional_batch_axis
class LPPool2d(_LPPoolNd):
    """Power-average pooling over (N, C, H, W); norm_type=2 is the L2 pool (SPEC §3)."""

    nd = 2


@optional_batch_axis
class LPPool3d(_LPPoolNd):
    """Power-average pooling over (N, C, D, H, W). See _LPPoolNd."""

    nd = 3


@optional_batch_axis
class WeightedAvgPool2d(_WeightedAvgPoolNd):
    """Gaussian-weighted average pooling over (N, C, H, W) (SPEC §3). See _WeightedAvgPoolNd."""

    nd = 2
