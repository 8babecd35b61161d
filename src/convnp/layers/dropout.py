"""Dropout (Srivastava et al., 2014), inverted as in PyTorch: scaled while training,
the identity in eval mode. Each layer owns its generator, ``self.rng``; training
checkpoints save its state, so a resumed run draws the same masks (``convnp.train``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convnp.layers.base import Layer


class Dropout(Layer):
    """Zero each value with probability p while training; scale the survivors by 1/(1 − p).

    Forward (training):  y = x ∘ r / (1 − p),   r_i ~ Bernoulli(1 − p) drawn per value
    Forward (eval):      y = x
    Backward (training): ∂E/∂x = dy ∘ r / (1 − p)   (the same mask r as the forward)
    Backward (eval):     ∂E/∂x = dy
    Scaling at training time keeps E[y] = x, so eval needs no correction. p = 1 zeroes
    everything (as PyTorch).

    Args:
        p: probability of zeroing, in [0, 1].
        rng: generator the masks are drawn from; kept as ``self.rng``.

    Shape:
        any input -> output of the same shape.
    """

    samples_independent = False  # masks come from one random stream

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng() if rng is None else rng

    def config(self) -> dict[str, Any]:
        return {"p": self.p}

    def _check(self, x: Any) -> np.ndarray:
        return self._check_input(x)

    def _mask_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """Shape of r: one draw per value (broadcast over whole maps in Dropout2d)."""
        return x.shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        if not self.training:
            self._remember(None, x.shape)  # the identity: no mask
            return x
        # draws are float32 whatever x's dtype, so a seed gives the same masks in both
        keep = self.rng.random(self._mask_shape(x), dtype=np.float32) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        mask = keep.astype(x.dtype) * x.dtype.type(scale)  # r / (1 − p)
        self._remember(mask, x.shape)
        return x * mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        mask, x_shape = self._recall()
        dy = self._check_grad_output(dy, x_shape)
        return dy if mask is None else dy * mask  # dy, or dy ∘ r / (1 − p)


class Dropout2d(Dropout):
    """Channel dropout: zero whole maps of (N, C, H, W) with probability p (PyTorch's).

    Same equations as Dropout with one draw r_nc per sample and map, broadcast over the
    H×W positions: neighbouring pixels of a map are strongly correlated, so dropping single
    pixels barely regularises a conv layer, while dropping maps does.
    """

    def _check(self, x: Any) -> np.ndarray:
        return self._check_input(x, ndim=4, layout="(N, C, H, W)")

    def _mask_shape(self, x: np.ndarray) -> tuple[int, ...]:
        return (*x.shape[:2], 1, 1)
