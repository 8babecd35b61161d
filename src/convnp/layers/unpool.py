"""Max unpooling: the partial inverse of max pooling, as PyTorch's MaxUnpool1d/2d/3d."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from convnp.layers.base import LAYOUTS, Layer, as_tuple, optional_batch_axis


class _MaxUnpoolNd(Layer):
    """Put each value back where max pooling found it; zeros elsewhere.

    Forward, per plane (n, c), with i(o) the winner's flat input index that
    ``MaxPool(return_indices=True)`` returned for output o:
        y(i(o)) = x(o),   y = 0 at every position no index names
    Backward (the adjoint, a gather):
        ∂E/∂x(o) = dy(i(o))
    Overlapping pooling windows can name one position twice: the later value is kept and
    backward gathers dy for both (PyTorch's CPU result). The output size is PyTorch's,
    (in − 1)·stride − 2·padding + kernel_size per axis, unless ``output_size``
    is given (e.g. the pooled input's size, when pooling dropped a remainder).

    Args:
        kernel_size, stride (default kernel_size), padding: those of the max pool.

    Shape:
        x (N, C, *in) and indices (N, C, *in) -> output (N, C, *out); or one sample
        without the batch axis, x and indices (C, *in) -> (C, *out), as PyTorch.
    """

    nd = 0
    per_sample_arguments = ("indices",)  # gains the batch axis with x (optional_batch_axis)

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
    ) -> None:
        super().__init__()
        nd = self.nd
        self.kernel_size = as_tuple(kernel_size, nd, "kernel_size")
        self.stride = self.kernel_size if stride is None else as_tuple(stride, nd, "stride")
        self.padding = as_tuple(padding, nd, "padding")
        if min(self.kernel_size + self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"{type(self).__name__}: kernel_size and stride must be >= 1, padding >= 0"
            )

    def config(self) -> dict[str, Any]:
        return {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
        }

    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(
            (size - 1) * s - 2 * p + k
            for size, k, s, p in zip(spatial, self.kernel_size, self.stride, self.padding)
        )

    def forward(
        self, x: np.ndarray, indices: np.ndarray, output_size: Sequence[int] | None = None
    ) -> np.ndarray:
        nd = self.nd
        x = self._check_input(x, ndim=nd + 2, layout=LAYOUTS[nd])
        indices = np.asarray(indices)
        if indices.shape != x.shape or indices.dtype.kind not in "iu":
            raise ValueError(
                f"{self!r}: indices must be integers of the input's shape {x.shape}, "
                f"got {indices.dtype} {indices.shape}"
            )
        out_shape = self._resolved_output_size(x.shape[2:], output_size)
        plane = math.prod(out_shape)
        if indices.size and (indices.min() < 0 or indices.max() >= plane):
            raise ValueError(
                f"{self!r}: indices must lie in [0, {plane}) for output size {out_shape}, "
                f"got values from {indices.min()} to {indices.max()}"
            )
        flat_indices = indices.reshape(*x.shape[:2], -1)
        y = np.zeros((*x.shape[:2], plane), dtype=x.dtype)
        np.put_along_axis(y, flat_indices, x.reshape(*x.shape[:2], -1), axis=2)  # y(i(o)) = x(o)
        y_shape = (*x.shape[:2], *out_shape)
        self._remember(flat_indices, x.shape, y_shape)
        return y.reshape(y_shape)

    def _resolved_output_size(
        self, spatial: tuple[int, ...], output_size: Sequence[int] | None
    ) -> tuple[int, ...]:
        if output_size is None:
            return self.output_shape(spatial)
        out_shape = tuple(int(size) for size in output_size)[-self.nd :]
        if len(out_shape) != self.nd or min(out_shape) < 1:
            raise ValueError(f"{self!r}: output_size must name {self.nd} sizes, got {output_size}")
        return out_shape

    def backward(self, dy: np.ndarray) -> np.ndarray:
        flat_indices, x_shape, y_shape = self._recall()
        flat_dy = self._check_grad_output(dy, y_shape).reshape(*y_shape[:2], -1)
        return np.take_along_axis(flat_dy, flat_indices, axis=2).reshape(x_shape)  # dy(i(o))


@optional_batch_axis
class MaxUnpool1d(_MaxUnpoolNd):
    """Max unpooling over (N, C, L). See _MaxUnpoolNd."""

    nd = 1


@optional_batch_axis
class MaxUnpool2d(_MaxUnpoolNd):
    """Max unpooling over (N, C, H, W). See _MaxUnpoolNd."""

    nd = 2


@optional_batch_axis
class MaxUnpool3d(_MaxUnpoolNd):
    """Max unpooling over (N, C, D, H, W). See _MaxUnpoolNd."""

    nd = 3
