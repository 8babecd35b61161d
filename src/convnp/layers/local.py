"""Locally connected layer: a convolution's connectivity without its weight sharing (SPEC §6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convnp.layers import _windows
from convnp.layers._conv_ops import Scratch, Workspace
from convnp.layers.base import DEFAULT_DTYPE, Layer, MemoryEstimate, as_tuple, uniform_init


class LocallyConnected2d(Layer):
    """Each output position has its own kernels: sparse connectivity, no parameter sharing.

    Forward (SPEC §6; the conv equation of SPEC §2 with position-dependent k and b):
        u_j(p,q) = Σ_i Σ_ab k_ij^{pq}(a,b) · x_i(p·s + a, q·s + b) + b_j(p,q)
    Backward (δ_j = ∂E/∂u_j, the dy this layer receives):
        ∂E/∂k_ij^{pq} = Σ_n δ_j(p,q) · p_i(p,q)    p_i(p,q): the patch of x_i met at (p,q)
        ∂E/∂b_j(p,q)  = Σ_n δ_j(p,q)
        ∂E/∂x_i       = Σ_{p,q} Σ_j δ_j(p,q) k_ij^{pq}, placed back at the patch's pixels
    A conv layer is the special case k^{pq} = k for every (p,q). Without sharing, the layer
    suits inputs whose features depend on position (e.g. aligned faces), at the price of
    L = H_out·W_out times the parameters, so the input size is fixed at construction.

    Implementation: for each block of samples the patches are gathered into ``cols`` of
    shape (L, C·K, B) (K kernel offsets), so the forward is one batched matrix product over
    the L positions, W(L, O, C·K) @ cols; the gradients are the two transposed products
    summed over blocks, and ∂E/∂cols is scattered back to the pixels looping only over the
    K kernel offsets (``_windows``). The block keeps cols and the output matrix under
    ``workspace.limit_bytes``, in a workspace reused from call to call; a training forward
    keeps only its input x.

    Args:
        in_channels: C. out_channels: O.
        input_size: (H, W) of the input, an int for square inputs.
        kernel_size, stride, padding: as for Conv2d (padding may be "valid", "same", "full").
        bias: learn one bias per output map and position.

    Shape:
        input (N, C, H, W) -> output (N, O, H_out, W_out) (Conv2d's output size);
        weight (H_out, W_out, O, C, kH, kW) (Torch7's SpatialConvolutionLocal layout);
        bias (O, H_out, W_out).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: int | Sequence[int],
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | str | Sequence[int] = 0,
        bias: bool = True,
        *,
        dtype: Any = DEFAULT_DTYPE,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.input_size = as_tuple(input_size, 2, "input_size")
        self.kernel_size = as_tuple(kernel_size, 2, "kernel_size")
        self.stride = as_tuple(stride, 2, "stride")
        self.padding = padding if isinstance(padding, str) else as_tuple(padding, 2, "padding")
        if min(self.kernel_size + self.stride) < 1 or min(self.input_size) < 1:
            raise ValueError("LocallyConnected2d: input_size, kernel_size, stride must be >= 1")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("LocallyConnected2d: in_channels and out_channels must be >= 1")
        self.pads = _windows.resolve_padding(padding, self.kernel_size, (1, 1))
        """(before, after) zero padding per spatial axis, resolved from ``padding``."""
        self.workspace = Workspace()
        self.output_size = tuple(
            _windows.output_size(size, k, s, before, after)
            for size, k, s, (before, after) in zip(
                self.input_size, self.kernel_size, self.stride, self.pads
            )
        )
        if min(self.output_size) < 1:
            raise ValueError(
                f"LocallyConnected2d: kernel {self.kernel_size} is larger than the padded "
                f"input {self.input_size}"
            )
        weight_shape = (*self.output_size, self.out_channels, self.in_channels, *self.kernel_size)
        bound = 1.0 / np.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        rng = np.random.default_rng() if rng is None else rng
        self._add_param("weight", uniform_init(rng, weight_shape, bound, dtype))
        if bias:
            bias_shape = (self.out_channels, *self.output_size)
            self._add_param("bias", uniform_init(rng, bias_shape, bound, dtype))

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "input_size": list(self.input_size),
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "bias": "bias" in self.params,
        }

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"kernel_size={self.kernel_size}"
        )
        if self.stride != (1, 1):
            text += f", stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding!r}"
        if "bias" not in self.params:
            text += ", bias=False"
        return text

    def _kernels(self) -> np.ndarray:
        """k^{pq} as (L, O, C·K): one (O, C·K) matrix per output position."""
        positions = self.output_size[0] * self.output_size[1]
        return self.params["weight"].reshape(positions, self.out_channels, -1)

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        """Keeps its input x; the workspace holds one block's patch and output matrices."""
        per_sample = self._bytes_per_sample(np.dtype(self.dtype).itemsize)
        needed = input_shape[0] * per_sample
        return MemoryEstimate(
            keeps_input=True,
            workspace_bytes=min(needed, max(self.workspace.limit_bytes, per_sample)),
        )

    def _bytes_per_sample(self, itemsize: int) -> int:
        taps = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        positions = self.output_size[0] * self.output_size[1]
        return positions * (taps + self.out_channels) * itemsize

    def _sample_blocks(self, n: int, itemsize: int) -> list[slice]:
        samples = max(1, self.workspace.limit_bytes // self._bytes_per_sample(itemsize))
        return [slice(start, min(n, start + samples)) for start in range(0, n, samples)]

    def _patches(self, x_block: np.ndarray, scratch: Scratch) -> np.ndarray:
        """p_i(p,q) of a block of samples as (L, C·K, B): one patch matrix per position."""
        x_padded = _windows.pad_spatial(x_block, self.pads)
        windows = _windows.windows(  # (B, C, P, Q, kH, kW)
            x_padded, self.kernel_size, self.stride, (1, 1), self.output_size
        )
        positions, _, taps = self._kernels().shape
        cols = scratch.array(
            "patches",
            (*self.output_size, self.in_channels, *self.kernel_size, len(x_block)),
            x_block.dtype,
        )
        cols[...] = windows.transpose(2, 3, 1, 4, 5, 0)
        return cols.reshape(positions, taps, len(x_block))

    def forward(self, x: np.ndarray) -> np.ndarray:
        h, w = self.input_size
        x = self._check_input(
            x, ndim=4, layout=f"(N, {self.in_channels}, {h}, {w})", channels=self.in_channels
        )
        if x.shape[2:] != self.input_size:
            raise ValueError(
                f"{self!r}: expected input (N, {self.in_channels}, {h}, {w}) (a locally "
                f"connected layer has a fixed input size), got shape {x.shape}"
            )
        u = np.empty((len(x), self.out_channels, *self.output_size), dtype=x.dtype)
        kernels = self._kernels()
        with self.workspace.claim() as scratch:
            for block in self._sample_blocks(len(x), x.itemsize):
                cols = self._patches(x[block], scratch)
                products = scratch.array("maps", (*kernels.shape[:2], cols.shape[2]), x.dtype)
                np.matmul(kernels, cols, out=products)  # Σ_i Σ_ab k_ij^{pq} · p_i(p,q)
                by_sample = products.reshape(*self.output_size, self.out_channels, -1)
                u[block] = by_sample.transpose(3, 2, 0, 1)
        if "bias" in self.params:
            u += self.params["bias"]  # + b_j(p,q)
        self._remember(x)
        return u

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self._backward(dy, input_grad=True)

    def backward_params(self, dy: np.ndarray) -> None:
        self._backward(dy, input_grad=False)

    def _backward(self, dy: np.ndarray, input_grad: bool) -> np.ndarray | None:
        """Fill ∂E/∂b and ∂E/∂k; return ∂E/∂x when ``input_grad``."""
        (x,) = self._recall()
        dy = self._check_grad_output(dy, (len(x), self.out_channels, *self.output_size))
        if "bias" in self.params:
            self.grads["bias"][...] = dy.sum(axis=0)  # ∂E/∂b_j(p,q) = Σ_n δ_j(p,q)
        kernels = self._kernels()
        dkernels = np.zeros_like(kernels)
        dx = np.zeros_like(x) if input_grad else None
        padded = tuple(s + b + a for s, (b, a) in zip(self.input_size, self.pads))
        with self.workspace.claim() as scratch:
            for block in self._sample_blocks(len(x), x.itemsize):
                cols = self._patches(x[block], scratch)
                delta = scratch.array("maps", (*kernels.shape[:2], cols.shape[2]), x.dtype)
                delta[...] = dy[block].transpose(2, 3, 1, 0).reshape(delta.shape)  # (L, O, B)
                dkernels += delta @ cols.transpose(0, 2, 1)  # Σ_n δ_j(p,q) · p_i(p,q)
                if input_grad:
                    dcols = np.matmul(kernels.transpose(0, 2, 1), delta, out=cols)  # Σ_j k δ_j
                    dpatches = dcols.reshape(
                        *self.output_size, self.in_channels, *self.kernel_size, -1
                    ).transpose(5, 2, 0, 1, 3, 4)  # (B, C, P, Q, kH, kW), as windows
                    shape = (len(dpatches), self.in_channels, *padded)
                    dx_padded = _windows.scatter_windows(dpatches, shape, self.stride, (1, 1))
                    dx[block] = _windows.crop_spatial(dx_padded, self.pads, self.input_size)
        self.grads["weight"][...] = dkernels.reshape(self.params["weight"].shape)
        return dx
