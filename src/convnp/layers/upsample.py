"""Upsampling, as PyTorch's nn.Upsample: nearest (Bouvrie's up()) and (bi/tri)linear."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from convnp.layers.adaptive_pool import _along_axes
from convnp.layers.base import LAYOUTS, Layer

# mode -> the number of spatial axes it takes (None: any of 1, 2, 3)
MODES: dict[str, int | None] = {"nearest": None, "linear": 1, "bilinear": 2, "trilinear": 3}


class Upsample(Layer):
    """Resize each map: nearest neighbour, or linear interpolation along every axis.

    Nearest with an integer factor n on every axis is Bouvrie's up() (SPEC §3, §5):
        y = up(x) = x ⊗ 1_{n×n}       (each value repeated into an n×n block)
        ∂E/∂x = down(dy)               (the sum over each block)
    In general both modes are separable linear maps, one (out × in) matrix M_a per axis:
        y = x ×_1 M_1 ×_2 M_2 …,      ∂E/∂x = dy ×_1 M_1ᵀ ×_2 M_2ᵀ …
    with PyTorch's source coordinate for output cell j of an axis of size L → L', scale
    r = 1/scale_factor when a scale factor is given, else L/L':
        nearest:                 M[j, min(⌊j·r⌋, L − 1)] = 1
        linear, align_corners:   s = j·(L − 1)/(L' − 1)
        linear, otherwise:       s = max((j + ½)·r − ½, 0)
        then M[j, ⌊s⌋] += 1 − λ and M[j, min(⌊s⌋ + 1, L − 1)] += λ, λ = s − ⌊s⌋.

    Args:
        size: output spatial size (an int for every axis, or one per axis), or
        scale_factor: multiplier(s) of the input size (output = ⌊L·scale_factor⌋).
        mode: "nearest" (1-D, 2-D or 3-D maps), "linear" (1-D), "bilinear" (2-D) or
            "trilinear" (3-D).
        align_corners: linear modes only; True aligns the corner cells' centres.

    Shape:
        input (N, C, *in) -> output (N, C, *out).
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        scale_factor: float | Sequence[float] | None = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Upsample: mode must be one of {tuple(MODES)}, got {mode!r}")
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample: give exactly one of size and scale_factor")
        if align_corners is not None and mode == "nearest":
            raise ValueError("Upsample: align_corners applies to the linear modes only")
        self.size = _as_sizes(size, int)
        self.scale_factor = _as_sizes(scale_factor, float)
        if min(self.size or self.scale_factor) <= 0:  # type: ignore[type-var]
            raise ValueError("Upsample: size and scale_factor must be positive")
        self.mode = mode
        self.align_corners = align_corners

    def config(self) -> dict[str, Any]:
        return {
            "size": None if self.size is None else list(self.size),
            "scale_factor": None if self.scale_factor is None else list(self.scale_factor),
            "mode": self.mode,
            "align_corners": self.align_corners,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items() if v is not None)

    def _per_axis(self, values: tuple | None, nd: int) -> tuple | None:
        if values is None or len(values) == nd:
            return values
        if len(values) == 1:
            return values * nd
        raise ValueError(f"{self!r}: {len(values)} sizes given for {nd} spatial axes")

    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        size = self._per_axis(self.size, len(spatial))
        if size is not None:
            return tuple(size)
        factors = self._per_axis(self.scale_factor, len(spatial))
        return tuple(math.floor(length * factor) for length, factor in zip(spatial, factors))

    def _source_scales(self, spatial: tuple[int, ...], out_shape: tuple[int, ...]) -> list:
        """r per axis: 1/scale_factor when given (as PyTorch), else L/L'."""
        factors = self._per_axis(self.scale_factor, len(spatial))
        if factors is not None:
            return [1.0 / factor for factor in factors]
        return [length / out for length, out in zip(spatial, out_shape)]

    def _matrix(self, length: int, out: int, scale: float) -> np.ndarray:
        """M (out × length) of one axis, as in the class docstring."""
        j = np.arange(out)
        matrix = np.zeros((out, length))
        if self.mode == "nearest":
            matrix[j, _nearest_source(length, out, scale)] = 1.0
            return matrix
        if self.align_corners:
            s = j * ((length - 1) / (out - 1) if out > 1 else 0.0)
        else:
            s = np.maximum((j + 0.5) * scale - 0.5, 0.0)
        low = np.minimum(np.floor(s).astype(np.int64), length - 1)
        weight = s - low  # λ
        np.add.at(matrix, (j, low), 1.0 - weight)
        np.add.at(matrix, (j, np.minimum(low + 1, length - 1)), weight)
        return matrix

    def _repeats(self, spatial: tuple[int, ...], out_shape: tuple, scales: list) -> tuple | None:
        """n per axis when nearest repeats every cell n times on every axis (M_a = I ⊗ 1_n)."""
        repeats = []
        for length, out, scale in zip(spatial, out_shape, scales):
            n = out // length
            source = _nearest_source(length, out, scale)
            if out != n * length or not np.array_equal(source, np.arange(out) // n):
                return None
            repeats.append(n)
        return tuple(repeats)

    def forward(self, x: np.ndarray) -> np.ndarray:
        nd = MODES[self.mode]
        ndims = (nd + 2,) if nd else (3, 4, 5)
        layout = " or ".join(LAYOUTS[n - 2] for n in ndims)
        x = self._check_input(x, ndim=ndims, layout=layout)
        spatial = x.shape[2:]
        out_shape = self.output_shape(spatial)
        if min(out_shape) < 1:
            raise ValueError(f"{self!r}: output size {out_shape} for input shape {x.shape}")
        scales = self._source_scales(spatial, out_shape)
        repeats = self._repeats(spatial, out_shape, scales) if self.mode == "nearest" else None
        if repeats is not None:
            self._remember(None, repeats, x.shape, out_shape)
            y = x
            for axis, n in enumerate(repeats, start=2):
                y = y.repeat(n, axis=axis)  # up(x) = x ⊗ 1_{n×n}
            return y
        matrices = [
            self._matrix(length, out, scale).astype(x.dtype)
            for length, out, scale in zip(spatial, out_shape, scales)
        ]
        self._remember(matrices, None, x.shape, out_shape)
        return _along_axes(x, matrices)  # x ×_1 M_1 ×_2 M_2 …

    def backward(self, dy: np.ndarray) -> np.ndarray:
        matrices, repeats, x_shape, out_shape = self._recall()
        dy = self._check_grad_output(dy, (*x_shape[:2], *out_shape))
        if repeats is not None:
            blocks = [size for length, n in zip(x_shape[2:], repeats) for size in (length, n)]
            summed_axes = tuple(range(3, 3 + 2 * len(repeats), 2))
            return dy.reshape(*x_shape[:2], *blocks).sum(axis=summed_axes)  # down(dy)
        return _along_axes(dy, [matrix.T for matrix in matrices])  # dy ×_a M_aᵀ


def _nearest_source(length: int, out: int, scale: float) -> np.ndarray:
    """min(⌊j·r⌋, L − 1) for each output cell j, in float32 as PyTorch computes it."""
    j = np.arange(out, dtype=np.float32)
    return np.minimum(np.floor(j * np.float32(scale)).astype(np.int64), length - 1)


def _as_sizes(value: Any, kind: type) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (kind(value),)
    return tuple(kind(v) for v in value)
