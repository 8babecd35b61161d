"""Adaptive and global pooling (SPEC §3, "variable-size inputs"): the pooling regions are
scaled to the input so a classifier always receives the same number of summaries.

PyTorch's bin rule along each spatial axis of length L with ``out`` bins:
    start(i) = floor(i·L / out),   end(i) = ceil((i+1)·L / out),   i = 0 … out−1
Bins may overlap by one cell when out does not divide L, and out may exceed L.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convnp.layers import _windows
from convnp.layers.base import LAYOUTS, Layer, optional_batch_axis

OutputSize = int | None | Sequence[int | None]


def _bins(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of every bin along one axis (PyTorch's rule above)."""
    i = np.arange(out)
    return (i * size) // out, -((-(i + 1) * size) // out)


class _AdaptivePoolNd(Layer):
    """Output size fixed, windows scaled to the input (see the module docstring)."""

    nd = 0  #: number of spatial axes (set by the 1d/2d/3d classes)

    def __init__(self, output_size: OutputSize) -> None:
        super().__init__()
        nd = self.nd
        single = output_size is None or isinstance(output_size, (int, np.integer))
        entries = (output_size,) * nd if single else tuple(output_size)
        valid = (o is None or isinstance(o, (int, np.integer)) and o >= 1 for o in entries)
        if len(entries) != nd or not all(valid):
            raise ValueError(
                f"{type(self).__name__}: output_size must be a positive int, None, or a "
                f"sequence of {nd} of those, got {output_size!r}"
            )
        self._entries = tuple(None if o is None else int(o) for o in entries)
        self.output_size = self._entries[0] if single else self._entries  # as given, like torch

    def config(self) -> dict[str, Any]:
        size = self.output_size
        return {"output_size": list(size) if isinstance(size, tuple) else size}

    def extra_repr(self) -> str:
        return f"output_size={self.output_size!r}"

    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """None entries keep the input's size along that axis, as in PyTorch."""
        return tuple(size if o is None else o for size, o in zip(spatial, self._entries))

    def _validated(self, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        x = self._check_input(x, ndim=self.nd + 2, layout=LAYOUTS[self.nd])
        if min(x.shape[2:]) < 1:
            raise ValueError(f"{self!r}: input has an empty spatial axis, shape {x.shape}")
        return x, self.output_shape(x.shape[2:])


def _along_axes(x: np.ndarray, matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Apply matrices[a] (rows: outputs, columns: inputs) along spatial axis a of x."""
    for axis, matrix in enumerate(matrices, start=2):
        x = np.moveaxis(np.moveaxis(x, axis, -1) @ matrix.T, -1, axis)
    return x


class _AdaptiveAvgPoolNd(_AdaptivePoolNd):
    """Adaptive average pooling: the mean of each bin (SPEC §3).

    Forward:   y = x ×_1 P_1 ×_2 P_2 …,   P_a[i, l] = 1/(end(i) − start(i)) for l in bin i
    Backward:  ∂E/∂x = dy ×_1 P_1ᵀ ×_2 P_2ᵀ …
    A box mean is separable, so one small (out × L) averaging matrix per axis does it with
    a matrix product, exactly (no cumulative-sum cancellation in float32) and with the
    backward its transpose. Measured on 64x16x28x28 -> 7x7 or 5x5: about 1 ms, against 8-9 ms
    for cumulative sums gathered at the bin edges.

    Args:
        output_size: an int, or one entry per spatial axis; None keeps that axis' size.

    Shape:
        input (N, C, *spatial) -> output (N, C, *output_size)
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x, out_shape = self._validated(x)
        matrices = []
        for size, out in zip(x.shape[2:], out_shape):
            start, end = _bins(size, out)
            cell = np.arange(size)
            in_bin = (cell >= start[:, None]) & (cell < end[:, None])
            matrices.append((in_bin / (end - start)[:, None]).astype(x.dtype))  # P_a
        self._remember(matrices, x.shape)
        return _along_axes(x, matrices)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        matrices, x_shape = self._recall()
        dy = self._check_grad_output(dy, (*x_shape[:2], *(m.shape[0] for m in matrices)))
        return _along_axes(dy, [m.T for m in matrices])


class _AdaptiveMaxPoolNd(_AdaptivePoolNd):
    """Adaptive max pooling: the max of each bin (SPEC §3).

    Forward:   y(o) = max_k B(x)(o, k),   B(x)(o, k) = x(cells(o, k)), the bins as windows
    Backward:  ∂E/∂x(i) = Σ_{o: i wins bin o} dy(o)
    Bin o along an axis is the table row cells[o, :] of width m, the widest bin; shorter bins
    repeat their last cell, which cannot change a max, and since the repeat comes after the
    original, the winner keeps PyTorch's first-maximum tie rule.

    Args:
        output_size: an int, or one entry per spatial axis; None keeps that axis' size.

    Shape:
        input (N, C, *spatial) -> output (N, C, *output_size)
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x, out_shape = self._validated(x)
        cells = tuple(_bin_cells(size, out) for size, out in zip(x.shape[2:], out_shape))
        patches = _windows.gather_windows(x, cells)  # B(x): (N, C, *out, *m)
        y, argmax = _windows.max_over_windows(patches, self.nd, with_argmax=self.grad_enabled)
        self._remember(argmax, cells, x.shape)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        argmax, cells, x_shape = self._recall()
        dy = self._check_grad_output(dy, argmax.shape)
        return _windows.scatter_max(dy, argmax, cells, x_shape)  # dy(o) -> winner


def _bin_cells(size: int, out: int) -> np.ndarray:
    """(out, m) table of the cells of every bin along one axis, m the widest bin; a shorter
    bin repeats its last cell."""
    start, end = _bins(size, out)
    width = int((end - start).max())
    return np.minimum(start[:, None] + np.arange(width), end[:, None] - 1)


@optional_batch_axis
class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Adaptive average pooling over (N, C, L). See _AdaptiveAvgPoolNd."""

    nd = 1


@optional_batch_axis
class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Adaptive average pooling over (N, C, H, W). See _AdaptiveAvgPoolNd."""

    nd = 2


@optional_batch_axis
class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    """Adaptive average pooling over (N, C, D, H, W). See _AdaptiveAvgPoolNd."""

    nd = 3


@optional_batch_axis
class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    """Adaptive max pooling over (N, C, L). See _AdaptiveMaxPoolNd."""

    nd = 1


@optional_batch_axis
class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    """Adaptive max pooling over (N, C, H, W). See _AdaptiveMaxPoolNd."""

    nd = 2


@optional_batch_axis
class AdaptiveMaxPool3d(_AdaptiveMaxPoolNd):
    """Adaptive max pooling over (N, C, D, H, W). See _AdaptiveMaxPoolNd."""

    nd = 3


class GlobalAvgPool2d(AdaptiveAvgPool2d):
    """Mean of each whole map: (N, C, H, W) -> (N, C, 1, 1) (SPEC §3).

    y_c = (1/HW) Σ_uv x_c(u,v); the end of a fully convolutional classifier (one map per
    class, averaged globally, then softmax). Same as AdaptiveAvgPool2d(1).
    """

    def __init__(self) -> None:
        super().__init__(1)

    def config(self) -> dict[str, Any]:
        return {}

    def extra_repr(self) -> str:
        return ""


class GlobalMaxPool2d(AdaptiveMaxPool2d):
    """Max of each whole map: (N, C, H, W) -> (N, C, 1, 1). Same as AdaptiveMaxPool2d(1)."""

    def __init__(self) -> None:
        super().__init__(1)

    def config(self) -> dict[str, Any]:
        return {}

    def extra_repr(self) -> str:
        return ""
