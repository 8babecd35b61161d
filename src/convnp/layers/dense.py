"""Fully connected layers (SPEC §1): Linear and Flatten."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from convnp.layers.base import DEFAULT_DTYPE, Layer, MemoryEstimate, uniform_init


class Linear(Layer):
    """Fully connected layer (SPEC §1; Bouvrie, "Fully Connected Back-propagation").

    Forward:   u = W x + b                  (batched: U = X Wᵀ + b)
    Backward:  ∂E/∂W = δ xᵀ                 (an outer product, summed over the batch: δᵀ X)
               ∂E/∂b = δ                    (summed over the batch)
               ∂E/∂x = Wᵀ δ                 (batched: δ W)
    where δ = ∂E/∂u is the dy this layer receives (f' is applied by the activation layer).

    Args:
        in_features: size of x. out_features: size of u. bias: learn b.

    Shape:
        input (N, in_features) -> output (N, out_features); weight (out_features, in_features).
        A single sample without a batch axis, (in_features,) -> (out_features,), as PyTorch.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: Any = DEFAULT_DTYPE,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError("Linear: in_features and out_features must be >= 1")
        rng = np.random.default_rng() if rng is None else rng
        bound = 1.0 / np.sqrt(self.in_features)
        self._add_param(
            "weight", uniform_init(rng, (self.out_features, self.in_features), bound, dtype)
        )
        if bias:
            self._add_param("bias", uniform_init(rng, (self.out_features,), bound, dtype))

    def config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": "bias" in self.params,
        }

    def extra_repr(self) -> str:
        text = f"{self.in_features}, {self.out_features}"
        return text if "bias" in self.params else text + ", bias=False"

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(
            x,
            ndim=(1, 2),
            layout=f"(N, {self.in_features}) or ({self.in_features},)",
            channels=self.in_features,
            channel_axis=-1,
        )
        batched = x.ndim == 2
        x = x if batched else x[None]  # one sample: a batch of one, the axis dropped after
        u = x @ self.params["weight"].T  # W x
        if "bias" in self.params:
            u += self.params["bias"]  # + b
        self._remember(x, batched)
        return u if batched else u[0]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, batched = self._recall()
        expected = (x.shape[0], self.out_features) if batched else (self.out_features,)
        delta = self._check_grad_output(dy, expected).reshape(x.shape[0], self.out_features)
        # ∂E/∂W = Σ_n δ xᵀ, no temporary: np.dot, as np.matmul leaves BLAS for N = 1 (an
        # outer product; Linear(400, 120) 75 -> 10 us, equal bits); dot's out= takes only
        # its exact result type, so a dy of another dtype goes through matmul's cast
        weight_grad = self.grads["weight"]
        product = np.dot if delta.dtype == weight_grad.dtype else np.matmul
        product(delta.T, x, out=weight_grad)
        if "bias" in self.params:
            self.grads["bias"][...] = delta.sum(axis=0)  # ∂E/∂b = Σ_n δ
        dx = delta @ self.params["weight"]  # ∂E/∂x = Wᵀ δ
        return dx if batched else dx[0]


class Flatten(Layer):
    """Merge the axes ``start_dim`` to ``end_dim`` into one (C order), exactly as PyTorch.

    (N, d1, d2, ...) -> (N, d1·d2·...) with the defaults start_dim=1, end_dim=-1: Bouvrie's
    network feeds the concatenated maps of the last subsampling layer to the fully connected
    layer. Negative axes count from the end; start_dim=0 merges the batch axis too. Backward
    only reshapes the gradient back.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)
        if (self.start_dim < 0) == (self.end_dim < 0) and self.start_dim > self.end_dim:
            raise ValueError(
                f"Flatten: start_dim ({start_dim}) must not come after end_dim ({end_dim})"
            )

    def config(self) -> dict[str, Any]:
        config = {"start_dim": self.start_dim}
        if self.end_dim != -1:
            config["end_dim"] = self.end_dim
        return config

    def axes(self, ndim: int) -> tuple[int, int]:
        """(first, last) axis merged for an input of ``ndim`` axes; ValueError if absent."""
        first = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        last = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not 0 <= first <= last < ndim:
            raise ValueError(
                f"{self!r}: cannot merge axes {self.start_dim}..{self.end_dim} of an input "
                f"with {ndim} axes"
            )
        return first, last

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        return MemoryEstimate()  # keeps only the input's shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        first, last = self.axes(x.ndim)
        self._remember(x.shape)
        return x.reshape(
            *x.shape[:first], math.prod(x.shape[first : last + 1]), *x.shape[last + 1 :]
        )

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (shape,) = self._recall()
        first, last = self.axes(len(shape))
        flat_shape = (*shape[:first], math.prod(shape[first : last + 1]), *shape[last + 1 :])
        return self._check_grad_output(dy, flat_shape).reshape(shape)
