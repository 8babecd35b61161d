"""Sliding windows over the spatial axes of (N, C, *spatial) arrays, and their adjoint.

Every convolution and pooling layer in convnp is written in terms of two operations:

* ``windows(x_padded, kernel, stride, dilation)`` -> a *view* of shape
  (N, C, *out, *kernel): element [n, c, o..., k...] is the input pixel that kernel offset k
  meets at output position o. No data is copied.
* ``scatter_windows(dwindows, ...)`` -> the adjoint: every window gradient is added back to
  the input pixel it came from (col2im). It loops over kernel offsets only, never over
  samples, maps or pixels.

Both work for any number of spatial dimensions (1-D, 2-D, 3-D).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

Pads = tuple[tuple[int, int], ...]


def output_size(
    size: int,
    kernel_size: int,
    stride: int,
    pad_before: int,
    pad_after: int,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length along one axis: PyTorch's ``Shape:`` formula.

    out = floor_or_ceil((size + pad_before + pad_after - dilation*(kernel-1) - 1) / stride) + 1;
    with ceil_mode the last window must still start inside the input or its left padding
    (the smaller last window of overlapping pooling, SPEC §3).
    """
    span = size + pad_before + pad_after - dilation * (kernel_size - 1) - 1
    if span < 0:
        return 0
    rounding = math.ceil if ceil_mode else math.floor
    out = rounding(span / stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_before:
        out -= 1
    return out


def resolve_padding(
    padding: int | str | Sequence[int],
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Pads:
    """(before, after) zero padding per spatial axis for an int, a tuple or a mode string.

    "valid": none. "full": dilation*(k-1) on both sides (every partial overlap, MATLAB's
    conv2 'full'). "same": total dilation*(k-1), the odd pixel after (PyTorch's rule),
    meant for stride 1.
    """
    nd = len(kernel_size)
    extents = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    if isinstance(padding, str):
        if padding == "valid":
            return tuple((0, 0) for _ in range(nd))
        if padding == "full":
            return tuple((e, e) for e in extents)
        if padding == "same":
            return tuple((e // 2, e - e // 2) for e in extents)
        raise ValueError(
            f"padding must be an int, a tuple, 'valid', 'same' or 'full', got {padding!r}"
        )
    if isinstance(padding, (int, np.integer)):
        values = (int(padding),) * nd
    else:
        values = tuple(int(p) for p in padding)
        if len(values) != nd:
            raise ValueError(f"padding must be an int or {nd} ints, got {padding!r}")
    if any(p < 0 for p in values):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return tuple((p, p) for p in values)


def pad_spatial(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """Pad the trailing len(pads) axes; returns x itself when there is nothing to pad."""
    if not any(before or after for before, after in pads):
        return x
    width = ((0, 0),) * (x.ndim - len(pads)) + tuple(pads)
    return np.pad(x, width, mode="constant", constant_values=value)


def windows(
    x_padded: np.ndarray,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> np.ndarray:
    """View of shape (N, C, *out_shape, *kernel_size) over an already padded input."""
    nd = len(kernel_size)
    spatial_axes = tuple(range(x_padded.ndim - nd, x_padded.ndim))
    extents = tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation))
    view = np.lib.stride_tricks.sliding_window_view(x_padded, extents, axis=spatial_axes)
    out_index = tuple(slice(0, s * (o - 1) + 1, s) for s, o in zip(stride, out_shape))
    kernel_index = tuple(slice(None, None, d) for d in dilation)
    return view[(Ellipsis, *out_index, *kernel_index)]


def scatter_windows(
    dwindows: np.ndarray,
    padded_shape: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> np.ndarray:
    """Adjoint of ``windows``: sum window gradients (N, C, *out, *k) into a padded-shape array.

    Each kernel offset k maps the whole output grid onto a strided slice of the input, so
    one vectorised ``+=`` per offset does the scatter-add (overlapping windows accumulate).
    """
    nd = len(stride)
    out_shape = dwindows.shape[-2 * nd : -nd]
    kernel_size = dwindows.shape[-nd:]
    dx_padded = np.zeros(padded_shape, dtype=dwindows.dtype)
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        target = tuple(
            slice(i * d, i * d + s * (o - 1) + 1, s)
            for i, d, s, o in zip(offset, dilation, stride, out_shape)
        )
        dx_padded[(Ellipsis, *target)] += dwindows[(Ellipsis, *offset)]
    return dx_padded


def crop_spatial(x_padded: np.ndarray, pads: Pads, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Undo ``pad_spatial`` (also drops any extra right padding added for ceil_mode)."""
    index = tuple(slice(before, before + size) for (before, _), size in zip(pads, spatial_shape))
    return x_padded[(Ellipsis, *index)]
