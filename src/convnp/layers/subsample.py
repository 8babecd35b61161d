"""Bouvrie's trained subsampling layer (SPEC §3): x_j = β_j · down(x_j^{l-1}) + b_j."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convnp.layers import _windows
from convnp.layers.base import DEFAULT_DTYPE, Layer, as_tuple, map_sums


class Subsample2d(Layer):
    """Bouvrie's trained subsampling: a scaled block sum plus bias, per map.

    Forward (SPEC §3; Bouvrie, "Sub-sampling Layers"):
        x_j = β_j · down(x_j^{l-1}) + b_j,   down() sums each non-overlapping n×n block
    Backward (SPEC §3; Bouvrie, "Computing the Gradients"):
        ∂E/∂b_j = Σ_uv δ_j(u,v)
        ∂E/∂β_j = Σ_uv (δ_j ∘ d_j)(u,v),     d_j = down(x_j^{l-1}) kept from forward
        ∂E/∂x^{l-1}_j = β_j · up(δ_j),        up(z) = z ⊗ 1_{n×n} (SPEC §5: repeat, Kronecker)
    The activation f is a separate layer; δ here is the dy it passes back.

    Init: β = 1, b = 0, so the layer starts as exactly Bouvrie's down() (a block sum) and
    passes δ back unscaled; training then moves β_j and b_j per map. The init is deterministic;
    ``rng`` is accepted only so every layer with parameters has the same signature.

    Args:
        channels: number of maps (C); each has its own β_j and b_j.
        kernel_size: block size n (or (n_h, n_w)); H and W must be divisible by it.
        dtype: parameter dtype; inputs must match it.

    Shape:
        input (N, C, H, W) -> output (N, C, H/n, W/n)
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | Sequence[int],
        *,
        dtype: Any = DEFAULT_DTYPE,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.channels = int(channels)
        self.kernel_size = as_tuple(kernel_size, 2, "kernel_size")
        if self.channels < 1 or min(self.kernel_size) < 1:
            raise ValueError("Subsample2d: channels and kernel_size must be >= 1")
        self._add_param("beta", np.ones(self.channels, dtype=dtype))
        self._add_param("bias", np.zeros(self.channels, dtype=dtype))

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "kernel_size": list(self.kernel_size)}

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(
            x, ndim=4, layout=f"(N, {self.channels}, H, W)", channels=self.channels
        )
        spatial = x.shape[2:]
        if any(size == 0 or size % n for size, n in zip(spatial, self.kernel_size)):
            raise ValueError(
                f"{self!r}: H and W must be positive multiples of kernel_size "
                f"{self.kernel_size}; got input shape {x.shape}"
            )
        out_shape = tuple(size // n for size, n in zip(spatial, self.kernel_size))
        blocks = _windows.windows(x, self.kernel_size, self.kernel_size, (1, 1), out_shape)
        d = _windows.sum_windows(blocks, 2)  # d_j = down(x_j): the sum of each n×n block
        beta, bias = self.params["beta"][:, None, None], self.params["bias"][:, None, None]
        y = beta * d  # x_j = β_j · down(x_j) + b_j (d is kept: a new array, then in place)
        y += bias
        self._remember(d)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (d,) = self._recall()  # d_j, cached by forward
        dy = self._check_grad_output(dy, d.shape)
        self.grads["bias"][...] = map_sums(dy)  # ∂E/∂b_j = Σ_uv δ_j
        self.grads["beta"][...] = map_sums(dy, d)  # ∂E/∂β_j = Σ_uv δ_j∘d_j
        up = _windows.upsample(dy, self.kernel_size)  # up(δ_j) = δ_j ⊗ 1_{n×n}, SPEC §5
        up *= self.params["beta"][:, None, None]  # ∂E/∂x_j = β_j · up(δ_j), in place
        return up
