"""Transposed convolution: ConvTranspose1d, ConvTranspose2d, ConvTranspose3d (SPEC §2, §6).

The adjoint of convolution, computed by the same three primitives as ``conv.py``
(``_conv_ops``): its forward is the input gradient of a convolution, its backward that
convolution's forward and weight gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convnp.layers import _windows
from convnp.layers._conv_ops import (
    ConvGeometry,
    Workspace,
    check_conv_arguments,
    conv_forward,
    conv_transpose,
    conv_weight_grad,
    skewed_bytes,
)
from convnp.layers.base import (
    DEFAULT_DTYPE,
    LAYOUTS,
    Layer,
    MemoryEstimate,
    as_tuple,
    map_sums,
    optional_batch_axis,
    uniform_init,
)


class _ConvTransposeNd(Layer):
    """Transposed ("fractionally strided") convolution, as PyTorch's ConvTransposeNd.

    Let C be the convolution of SPEC §2 from maps with ``out_channels`` channels to maps
    with ``in_channels`` channels, with this layer's kernels k_ij, stride s, zero padding
    p and dilation d: (C z)_i = Σ_{j: i ∈ M_j} z_j ⋆ k_ij ("⋆" cross-correlation, as
    PyTorch). This layer computes its adjoint Cᵀ: each input cell x_i(u) adds its kernel,
    scaled by x_i(u), into the output at u·s − p (cells d apart):

    Forward:
        y_j(t) = Σ_{i ∈ M_j} Σ_{u, a: t = u·s + a·d − p} x_i(u) · k_ij(a) + b_j
               = Σ_{i ∈ M_j} conv(x_i, rot180(k_ij), 'full') + b_j     (s = d = 1, p = 0)
    which is the input-gradient line of SPEC §2 with x in the place of δ.

    Backward (δ_j = ∂E/∂y_j is the dy this layer receives):
        ∂E/∂b_j  = Σ_t δ_j(t)
        ∂E/∂x_i  = Σ_{j: i ∈ M_j} δ_j ⋆ k_ij      (C δ: the forward convolution of SPEC §2)
        ∂E/∂k_ij = Σ_u x_i(u) · q_j(u)            q_j(u): the patch of δ_j that k met at u
    the last being SPEC §2's weight gradient of C with the roles of input and output
    swapped (δ is the convolution's input, x its output gradient).

    The three lines are ``conv_transpose``, ``conv_forward`` and ``conv_weight_grad`` of
    ``_conv_ops`` (blocks of samples in a bounded, reused ``workspace``, SPEC §5).
    ``groups`` splits the maps into that many groups, M_j being the input maps of j's
    group; the weight is stored as PyTorch stores it, (in_channels, out_channels/groups,
    *kernel_size), which is C's own weight layout.

    Output size per axis (PyTorch's formula):
        out = (in − 1)·s − 2p + d·(k − 1) + output_padding + 1
    ``output_padding`` (< s or < d) adds cells at the end of each axis that only the last
    inputs reach (or none: then they hold b_j); it resolves the ambiguity of a strided
    convolution, which maps s input sizes to one output size. ``forward(x, output_size)``
    picks the output padding from a requested size instead, as PyTorch.

    Memory: a training forward keeps its input x for ∂E/∂k; the workspace holds at most a
    few ``Workspace.limit_bytes`` (``memory_estimate``).
    """

    nd = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        output_padding: int | Sequence[int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | Sequence[int] = 1,
        *,
        dtype: Any = DEFAULT_DTYPE,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        nd, name = self.nd, type(self).__name__
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = as_tuple(kernel_size, nd, "kernel_size")
        self.stride = as_tuple(stride, nd, "stride")
        self.padding = as_tuple(padding, nd, "padding")
        self.output_padding = as_tuple(output_padding, nd, "output_padding")
        self.dilation = as_tuple(dilation, nd, "dilation")
        self.groups = int(groups)
        sizes = self.kernel_size + self.stride + self.dilation
        check_conv_arguments(name, self.in_channels, self.out_channels, sizes, self.groups)
        if min(self.padding + self.output_padding) < 0:
            raise ValueError(f"{name}: padding and output_padding must be >= 0")
        for extra, s, d in zip(self.output_padding, self.stride, self.dilation):
            if extra >= max(s, d):
                raise ValueError(
                    f"{name}: output_padding {self.output_padding} must be smaller than "
                    f"stride {self.stride} or dilation {self.dilation} on each axis"
                )
        pads = tuple((p, p) for p in self.padding)
        self.geometry = ConvGeometry(self.kernel_size, self.stride, pads, self.dilation)
        """The convolution C (from the output's maps to the input's) this layer transposes."""
        self.workspace = Workspace()

        taps = int(np.prod(self.kernel_size))
        bound = 1.0 / np.sqrt(self.out_channels // self.groups * taps)  # PyTorch's fan_in
        rng = np.random.default_rng() if rng is None else rng
        weight_shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        self._add_param("weight", uniform_init(rng, weight_shape, bound, dtype))
        if bias:
            self._add_param("bias", uniform_init(rng, (self.out_channels,), bound, dtype))

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "output_padding": list(self.output_padding),
            "groups": self.groups,
            "bias": "bias" in self.params,
            "dilation": list(self.dilation),
        }

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        ones, zeros = (1,) * self.nd, (0,) * self.nd
        for key, value, default in (
            ("stride", self.stride, ones),
            ("padding", self.padding, zeros),
            ("output_padding", self.output_padding, zeros),
            ("dilation", self.dilation, ones),
        ):
            if value != default:
                text += f", {key}={value}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self.params:
            text += ", bias=False"
        return text

    def output_shape(
        self, spatial: tuple[int, ...], output_padding: tuple[int, ...] | None = None
    ) -> tuple[int, ...]:
        """out = (in − 1)·s − 2p + d·(k − 1) + output_padding + 1 per axis."""
        extra = self.output_padding if output_padding is None else output_padding
        return tuple(
            (size - 1) * s - 2 * p + d * (k - 1) + e + 1
            for size, s, p, d, k, e in zip(
                spatial, self.stride, self.padding, self.dilation, self.kernel_size, extra
            )
        )

    def _output_padding(
        self, spatial: tuple[int, ...], output_size: Sequence[int] | None
    ) -> tuple[int, ...]:
        """The output padding that gives ``output_size`` (PyTorch's rule: between the
        smallest size and s − 1 more), or the layer's own when None."""
        if output_size is None:
            return self.output_padding
        if len(output_size) not in range(self.nd, self.nd + 3):
            raise ValueError(
                f"{self!r}: output_size must give {self.nd} spatial sizes, got {output_size}"
            )
        requested = tuple(int(size) for size in output_size)[-self.nd :]  # (N, C, *) allowed
        smallest = self.output_shape(spatial, (0,) * self.nd)
        largest = tuple(size + s - 1 for size, s in zip(smallest, self.stride))
        if any(not low <= size <= high for size, low, high in zip(requested, smallest, largest)):
            raise ValueError(
                f"{self!r}: requested an output size of {requested}, but valid sizes range "
                f"from {smallest} to {largest} (for an input of spatial shape {spatial})"
            )
        return tuple(size - low for size, low in zip(requested, smallest))

    def _padded_input(self, x: np.ndarray, out_spatial: tuple[int, ...]) -> np.ndarray:
        """x as the output of C on maps of ``out_spatial``: C's output has ⌊output_padding/s⌋
        more cells per axis than x when output_padding ≥ s (possible when d > s); those
        cells are zeros, which add nothing to y."""
        missing = [
            size - have for size, have in zip(self.geometry.output_shape(out_spatial), x.shape[2:])
        ]
        if not any(missing):
            return x
        return _windows.pad_spatial(x, tuple((0, extra) for extra in missing))

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        """Keeps its input x for ∂E/∂k; the workspace holds one block of C's patch matrix
        (out_channels·K rows) and output matrix (in_channels rows), the padded slab, and
        at stride 1 the forward's skewed rows (``_conv_ops.skewed_bytes``)."""
        n, _, *spatial = input_shape
        out_shape = self.output_shape(tuple(spatial))
        padded = [size + 2 * p for size, p in zip(out_shape, self.padding)]
        taps = int(np.prod(self.kernel_size))
        columns = spatial[0] * int(np.prod(padded[1:]))  # C's output rows x padded width
        per_sample = (
            (self.out_channels * taps + self.in_channels) * columns * np.dtype(self.dtype).itemsize
        )
        patches = min(n * per_sample, max(self.workspace.limit_bytes, per_sample))
        itemsize = np.dtype(self.dtype).itemsize
        skewed = skewed_bytes(n, self.out_channels, tuple(padded), self.geometry, itemsize)
        return MemoryEstimate(
            keeps_input=True, workspace_bytes=patches + patches // taps + 1 + skewed
        )

    def forward(self, x: np.ndarray, output_size: Sequence[int] | None = None) -> np.ndarray:
        nd = self.nd
        layout = LAYOUTS[nd].replace("C", str(self.in_channels))
        x = self._check_input(x, ndim=nd + 2, layout=layout, channels=self.in_channels)
        out_spatial = self.output_shape(x.shape[2:], self._output_padding(x.shape[2:], output_size))
        if min(out_spatial) < 1:
            raise ValueError(
                f"{self!r}: the output would have spatial shape {out_spatial} (padding "
                f"{self.padding} removes more than the input spans); input shape {x.shape}"
            )
        # y_j = Σ_{i ∈ M_j} x_i scattered through k_ij + b_j: Cᵀ x
        y = conv_transpose(
            self._padded_input(x, out_spatial),
            self.params["weight"],
            self.geometry,
            out_spatial,
            groups=self.groups,
            workspace=self.workspace,
        )
        if "bias" in self.params:
            y += self.params["bias"].reshape(-1, *(1,) * nd)
        self._remember(x, out_spatial)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, out_spatial = self._recall()
        dy = self._check_grad_output(dy, (len(x), self.out_channels, *out_spatial))
        # ∂E/∂x_i = Σ_{j: i ∈ M_j} δ_j ⋆ k_ij (C δ); its patches of δ are reused for ∂E/∂k
        dx = conv_forward(
            dy,
            self.params["weight"],
            None,
            self.geometry,
            groups=self.groups,
            workspace=self.workspace,
        )
        self._param_grads(x, out_spatial, dy)
        return dx[(slice(None), slice(None), *(slice(0, size) for size in x.shape[2:]))]

    def backward_params(self, dy: np.ndarray) -> None:
        x, out_spatial = self._recall()
        dy = self._check_grad_output(dy, (len(x), self.out_channels, *out_spatial))
        self._param_grads(x, out_spatial, dy)

    def _param_grads(self, x: np.ndarray, out_spatial: tuple[int, ...], dy: np.ndarray) -> None:
        """Fill ∂E/∂b and ∂E/∂k from the input x and δ = dy."""
        if "bias" in self.params:
            self.grads["bias"][...] = map_sums(dy)  # Σ_t δ_j
        # ∂E/∂k_ij = Σ_u x_i(u) · q_j(u): C's weight gradient, input δ, output gradient x
        self.grads["weight"][...] = conv_weight_grad(
            dy,
            self._padded_input(x, out_spatial),
            self.geometry,
            groups=self.groups,
            workspace=self.workspace,
        )


@optional_batch_axis
class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution over (N, C, L). See _ConvTransposeNd."""

    nd = 1


@optional_batch_axis
class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution over (N, C, H, W): the adjoint of Conv2d (SPEC §2), the
    learned upsampling of decoders. Weight (in_channels, out_channels/groups, kH, kW).
    Full equations and the implementation are described on ``_ConvTransposeNd``."""

    nd = 2


@optional_batch_axis
class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution over (N, C, D, H, W). See _ConvTransposeNd."""

    nd = 3
