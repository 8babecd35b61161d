"""Batch normalisation (Ioffe & Szegedy, 2015), with PyTorch's arguments and semantics.

Not in Bouvrie's notes; it is what lets a small CNN train fast and far on a CPU budget
(the ``fashion`` recipe). Statistics are per channel c, over every axis except C: the
batch and, for maps, all spatial positions (m values per channel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from convnp.layers.base import DEFAULT_DTYPE, Layer, map_sums


class _BatchNorm(Layer):
    """Normalise each channel by batch statistics, then scale and shift.

    Forward (training; μ_c, σ²_c over the m = N·(spatial size) values of channel c):
        μ_c = (1/m) Σ x,   σ²_c = (1/m) Σ (x − μ_c)²              (biased, for normalising)
        x̂ = (x − μ_c) / σ_c,   σ_c = √(σ²_c + eps)
        y = γ_c x̂ + β_c
    Running statistics (buffers, used in eval mode), PyTorch's update with factor α:
        running_mean ← (1 − α)·running_mean + α·μ_c
        running_var  ← (1 − α)·running_var  + α·σ²_c · m/(m − 1)   (unbiased)
    α = momentum, or with momentum=None α = 1/t after the t-th training batch (counted in
    the ``num_batches_tracked`` buffer): the cumulative average of every batch's statistics.
    Eval mode normalises with the running statistics instead (an affine map per channel).
    An empty batch (N = 0) gives an empty output and leaves the statistics as they are
    (PyTorch's result; PyTorch still counts it in num_batches_tracked, and so does this).

    Backward (sums over the m values of channel c):
        ∂E/∂γ_c = Σ dy·x̂,   ∂E/∂β_c = Σ dy
        ∂E/∂x = (1/m)·(γ_c/σ_c)·(m·dy − Σ dy − x̂·Σ(dy·x̂))   (batch statistics)
        ∂E/∂x = (γ_c/σ_c)·dy                               (running statistics, eval mode)
    With batch statistics, the compact form follows from x̂ depending on x directly and
    through μ_c and σ_c: ∂x̂_i/∂x_j = (1/σ)(δ_ij − 1/m − x̂_i x̂_j/m). In eval mode μ_c and
    σ_c are the running statistics, constants, so x̂ is affine in x.

    Synchronised batch statistics (PyTorch's SyncBatchNorm) for data-parallel training:
    with ``sum_over_ranks`` set (``convnp.runtime.distributed.sync_batch_norm`` sets it to
    the ranks' Allreduce), every Σ above, forward and backward, and m run over all ranks'
    slices of the global batch, so the layer computes exactly what it would on the whole
    batch in one process. ∂E/∂γ_c and ∂E/∂β_c stay this rank's sums (the training step's
    Allreduce adds them).

    Args:
        num_features: number of channels C.
        eps: added to σ² before the square root.
        momentum: weight α of the newest batch in the running statistics, or None for the
            cumulative moving average.
        affine: learn γ ("weight", init 1) and β ("bias", init 0).
        bias: with affine, whether β is learned (False: y = γ x̂, PyTorch's ``bias=False``).
        track_running_stats: keep running_mean/running_var buffers and use them in eval
            mode; if False, eval mode also normalises with the batch's own statistics.
    """

    samples_independent = False  # its statistics span the batch

    _layouts: dict[int, str] = {}

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = True,
        dtype: Any = DEFAULT_DTYPE,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if int(num_features) < 1:
            raise ValueError(f"{name}: num_features must be >= 1, got {num_features}")
        if not eps > 0 or not (momentum is None or 0 <= momentum <= 1):
            raise ValueError(f"{name}: need eps > 0 and 0 <= momentum <= 1 (or None)")
        self.num_features = int(num_features)
        # SyncBatchNorm: sums an array over the data-parallel ranks (None: this batch only)
        self.sum_over_ranks: Callable[[np.ndarray], np.ndarray] | None = None
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if self.affine:
            self._add_param("weight", np.ones(self.num_features, dtype=dtype))  # γ
            if bias:
                self._add_param("bias", np.zeros(self.num_features, dtype=dtype))  # β
        if self.track_running_stats:
            self.buffers["running_mean"] = np.zeros(self.num_features, dtype=dtype)
            self.buffers["running_var"] = np.ones(self.num_features, dtype=dtype)
            if self.momentum is None:  # t, for α = 1/t; saved with the model, as PyTorch
                self.buffers["num_batches_tracked"] = np.zeros((), dtype=dtype)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
            "track_running_stats": self.track_running_stats,
        }
        if self.affine and "bias" not in self.params:
            config["bias"] = False
        return config

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}" + "".join(
            f", {key}=False"
            for key, value in self.config().items()
            if key in ("affine", "track_running_stats", "bias") and not value
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        layout = " or ".join(self._layouts.values()).replace("C", str(self.num_features))
        x = self._check_input(
            x, ndim=tuple(self._layouts), layout=layout, channels=self.num_features
        )
        # (N, C, L) view, L = all spatial positions
        x3 = x.reshape(x.shape[0], self.num_features, math.prod(x.shape[2:]))  # N may be 0
        m = x3.shape[0] * x3.shape[2]
        batch_statistics = self.training or not self.track_running_stats
        synchronised = batch_statistics and self.sum_over_ranks is not None
        if m == 0 and not synchronised:  # an empty batch: nothing to normalise or learn from
            if self.training and self.track_running_stats:
                self._count_batch()
            self._remember(x3, np.ones(self.num_features, x.dtype), x.shape, batch_statistics, m)
            return x.copy()
        if batch_statistics:
            sum_x = map_sums(x3)  # Σ x
            if synchronised:  # over every rank's slice (float64: m must stay exact)
                sums = self.sum_over_ranks(np.append(sum_x.astype(np.float64), m))
                sum_x, m = sums[:-1].astype(x.dtype), int(sums[-1])
            if m < 2:
                raise ValueError(
                    f"{self!r}: batch statistics need more than one value per channel, "
                    f"got input shape {x.shape}"
                )
            mean = sum_x / m  # μ_c
            x_hat = x3 - _column(mean)
            sum_squares = map_sums(x_hat, x_hat)  # Σ (x − μ_c)²
            if synchronised:
                sum_squares = self.sum_over_ranks(sum_squares).astype(x.dtype)
            var = sum_squares / m  # σ²_c, biased
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, m)
        else:
            mean = self.buffers["running_mean"].astype(x.dtype, copy=False)
            var = self.buffers["running_var"].astype(x.dtype, copy=False)
            x_hat = x3 - _column(mean)
        inv_std = 1 / np.sqrt(var + x.dtype.type(self.eps))  # 1/σ_c
        x_hat *= _column(inv_std)  # x̂ = (x − μ)/σ
        self._remember(x_hat, inv_std, x.shape, batch_statistics, m)
        if not self.affine:
            return x_hat.reshape(x.shape)
        y = x_hat * _column(self.params["weight"])  # γ x̂
        if "bias" in self.params:
            y += _column(self.params["bias"])  # + β
        return y.reshape(x.shape)

    def _count_batch(self) -> float:
        """α for this training batch: momentum, or 1/t for the t-th batch when it is None."""
        if self.momentum is not None:
            return self.momentum
        count = self.buffers["num_batches_tracked"]
        count += 1
        return 1.0 / float(count)

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, m: int) -> None:
        alpha = self._count_batch()
        running_mean = self.buffers["running_mean"]
        running_var = self.buffers["running_var"]
        running_mean[...] = (1 - alpha) * running_mean + alpha * mean
        running_var[...] = (1 - alpha) * running_var + alpha * var * (m / (m - 1))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x_hat, inv_std, x_shape, batch_statistics, m = self._recall()
        dy = self._check_grad_output(dy, x_shape).reshape(x_hat.shape)
        sum_dy = map_sums(dy)  # Σ dy
        sum_dy_x_hat = map_sums(dy, x_hat)  # Σ dy·x̂
        scale = inv_std  # γ/σ (1/σ without γ)
        if self.affine:
            self.grads["weight"][...] = sum_dy_x_hat  # ∂E/∂γ
            if "bias" in self.params:
                self.grads["bias"][...] = sum_dy  # ∂E/∂β
            scale = scale * self.params["weight"]
        if not batch_statistics:  # running statistics: constants
            return (dy * _column(scale)).reshape(x_shape)  # (γ/σ)·dy
        if self.sum_over_ranks is not None:  # synchronised: the sums over the global batch
            sums = self.sum_over_ranks(np.concatenate([sum_dy, sum_dy_x_hat]))
            sum_dy, sum_dy_x_hat = np.split(sums.astype(dy.dtype, copy=False), 2)
        dx = x_hat * _column(-sum_dy_x_hat)  # −x̂·Σ(dy·x̂)
        dx += m * dy  # + m·dy
        dx -= _column(sum_dy)  # − Σ dy
        dx *= _column(scale / max(m, 1))  # (1/m)·γ/σ; an empty batch has nothing to scale
        return dx.reshape(x_shape)


def _column(values: np.ndarray) -> np.ndarray:
    """A per-channel (C,) vector shaped (1, C, 1) to broadcast against (N, C, L)."""
    return values[None, :, None]


class BatchNorm1d(_BatchNorm):
    """Batch norm of features (N, C) or of 1-D maps (N, C, L), per channel. See _BatchNorm."""

    _layouts = {2: "(N, C)", 3: "(N, C, L)"}


class BatchNorm2d(_BatchNorm):
    """Batch norm of 2-D maps (N, C, H, W), per channel. See _BatchNorm."""

    _layouts = {4: "(N, C, H, W)"}


class BatchNorm3d(_BatchNorm):
    """Batch norm of 3-D maps (N, C, D, H, W), per channel. See _BatchNorm."""

    _layouts = {5: "(N, C, D, H, W)"}
