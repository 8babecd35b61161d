"""LeNet-5's output layer of Euclidean radial-basis units (SPEC §6)."""

from __future__ import annotations

from typing import Any

import numpy as np

from convnp.layers.base import DEFAULT_DTYPE, Layer


class EuclideanRBF(Layer):
    """Euclidean RBF units: each output is the squared distance to a learned centre.

    Forward (SPEC §6; LeCun et al. 1998, eq. 7):
        y_i = Σ_j (x_j − w_ij)²
    Backward (dy_i = ∂E/∂y_i):
        ∂E/∂w_ij = −2 Σ_n dy_i (x_j − w_ij)        (summed over the batch)
        ∂E/∂x_j  =  2 Σ_i dy_i (x_j − w_ij)
    y_i is an energy (a penalty): the smaller, the better x matches class i. Train it with
    ``convnp.losses.RBFEnergyLoss``, whose rubbish-class term keeps the centres from all
    collapsing onto one point, and predict the class with the smallest y_i.

    Init: LeCun et al. set the centres by hand to ±1 bitmaps of stylised characters (7×12
    for 84 inputs). Here each w_ij is drawn as ±1 with equal probability (``rng``): random
    codes of 84 signs lie about 4·42 = 168 apart in squared distance, well separated, and
    ±1 is inside the range of LeCun's scaled tanh (±1.7159), so each code is reachable. To
    keep the centres fixed as LeCun did at first, give the optimizer ``lr_mult`` 0 for this
    layer's weight.

    The differences x_j − w_ij are formed explicitly, (N, out, in) numbers: exact (no
    cancellation in ‖x‖² − 2x·w + ‖w‖²) and cheap for an output layer of a few classes.

    Args:
        in_features: size of x (84 in LeNet-5). out_features: number of classes.

    Shape:
        input (N, in_features) -> output (N, out_features); weight (out_features, in_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dtype: Any = DEFAULT_DTYPE,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError("EuclideanRBF: in_features and out_features must be >= 1")
        rng = np.random.default_rng() if rng is None else rng
        signs = rng.integers(0, 2, size=(self.out_features, self.in_features)) * 2 - 1
        self._add_param("weight", signs.astype(dtype))

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features}

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(
            x, ndim=2, layout=f"(N, {self.in_features})", channels=self.in_features
        )
        difference = x[:, None, :] - self.params["weight"][None, :, :]  # x_j − w_ij
        y = np.einsum("nij,nij->ni", difference, difference)  # Σ_j (x_j − w_ij)²
        self._remember(difference)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (difference,) = self._recall()
        dy = self._check_grad_output(dy, difference.shape[:2])
        weighted = dy[:, :, None] * difference  # dy_i (x_j − w_ij)
        self.grads["weight"][...] = -2.0 * weighted.sum(axis=0)  # ∂E/∂w_ij
        return 2.0 * weighted.sum(axis=1)  # ∂E/∂x_j
