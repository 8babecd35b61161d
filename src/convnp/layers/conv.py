"""Convolution layers: Conv1d, Conv2d, Conv3d over one N-d implementation (SPEC §2, §6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convnp.layers import _windows, _winograd
from convnp.layers._conv_ops import (
    ConvGeometry,
    Workspace,
    check_conv_arguments,
    conv_weight_grad,
    skewed_bytes,
)
from convnp.layers._winograd import conv_forward, conv_transpose
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


class _ConvNd(Layer):
    """Convolution combining chosen input maps (SPEC §2; Bouvrie, "Convolution Layers").

    Forward:
        u_j = Σ_{i ∈ M_j} x_i * k_ij + b_j
    M_j is the set of input maps output map j combines: all of them, or row j of
    ``connection_table`` (LeNet-5's C3 table is the classic example). With
    ``flip_kernel=True`` "*" is true convolution (Bouvrie, MATLAB's convn: the kernel is
    rotated by 180°); with False it is cross-correlation (PyTorch). The learned kernels of
    the two differ only by rot180.

    Backward (δ_j = ∂E/∂u_j is the dy this layer receives; f' is a separate layer):
        ∂E/∂b_j  = Σ_uv δ_j(u,v)
        ∂E/∂k_ij = Σ_uv δ_j(u,v) · p_i(u,v)      p_i(u,v): the patch of x_i that met k at (u,v)
        ∂E/∂x_i  = Σ_{j: i ∈ M_j} conv(δ_j, rot180(k_ij), 'full')   (the sum over next maps)

    Each of the three lines is one primitive of ``_conv_ops`` (``conv_forward``,
    ``conv_weight_grad``, ``conv_transpose``), which work on blocks of samples in a
    bounded, reused ``workspace`` (SPEC §5); the forward and ∂E/∂x of 3x3, stride-1
    convolutions go by Winograd's F(2x2, 3x3) instead (``_winograd``).

    Two ways to choose M_j, stored differently:

    * ``groups`` = G (PyTorch's): the maps split into G consecutive groups and M_j is the
      C/G input maps of j's group g(j), so only those kernels exist: ``weight`` is
      (out_channels, in_channels/G, *kernel_size) as in PyTorch, k_ij = weight[j, i − g(j)·C/G],
      and each group is its own smaller convolution (G = in_channels: depthwise), so
      weights, memory and multiplications all fall by G.
    * ``connection_table`` (any M_j, e.g. LeNet-5's C3): ``weight`` is the full
      (out_channels, in_channels, *kernel_size); kernels outside M_j are masked in the
      forward and their gradients are zero, so they stay exactly zero through training.

    ``padding_mode`` (PyTorch's): "zeros" pads inside the convolution; "reflect",
    "replicate" and "circular" pad x explicitly, x̃ = pad(x), and convolve x̃ without
    padding, so ∂E/∂x is the gradient on x̃ folded back by the adjoint of the padding
    (``_windows.fold_padding``: each padded cell adds into the cell of x it copies).

    Memory: a training forward keeps its input x (shared with the layer before, which
    usually keeps it anyway) for ∂E/∂k; the workspace holds at most a few
    ``Workspace.limit_bytes`` (``memory_estimate``).
    """

    nd = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | str | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        connection_table: np.ndarray | Sequence[Sequence[bool]] | None = None,
        flip_kernel: bool = False,
        dtype: Any = DEFAULT_DTYPE,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        nd = self.nd
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = as_tuple(kernel_size, nd, "kernel_size")
        self.stride = as_tuple(stride, nd, "stride")
        self.dilation = as_tuple(dilation, nd, "dilation")
        self.padding = padding if isinstance(padding, str) else as_tuple(padding, nd, "padding")
        self.groups = int(groups)
        self.flip_kernel = bool(flip_kernel)
        self.pads = _windows.resolve_padding(padding, self.kernel_size, self.dilation)
        """(before, after) zero padding per spatial axis, resolved from ``padding``."""
        if padding_mode not in _windows.PADDING_MODES:
            raise ValueError(
                f"{type(self).__name__}: padding_mode must be one of "
                f"{sorted(_windows.PADDING_MODES)}, got {padding_mode!r}"
            )
        self.padding_mode = str(padding_mode)
        no_pads = ((0, 0),) * nd
        explicit = self.padding_mode != "zeros"
        self.input_pads = self.pads if explicit else no_pads
        """Padding applied to x before the convolution (x̃ = pad(x)): none for "zeros"."""
        conv_pads = no_pads if explicit else self.pads
        self.geometry = ConvGeometry(self.kernel_size, self.stride, conv_pads, self.dilation)
        """The convolution run on x̃: zero padding inside it for "zeros", none otherwise."""
        self.workspace = Workspace()
        sizes = self.kernel_size + self.stride + self.dilation
        check_conv_arguments(
            type(self).__name__, self.in_channels, self.out_channels, sizes, self.groups
        )
        self.connection_mask = self._build_mask(connection_table)
        """Boolean (out_channels, in_channels) table of M_j: True where x_i feeds map j."""
        self.has_connection_table = connection_table is not None

        weight_shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        # |M_j|·K per map j: PyTorch's in_channels/groups · K, or the table's row
        fan_in = self.connection_mask.sum(axis=1) * int(np.prod(self.kernel_size))
        bound = 1.0 / np.sqrt(np.maximum(fan_in, 1))
        rng = np.random.default_rng() if rng is None else rng
        weight = uniform_init(rng, weight_shape, bound.reshape((-1,) + (1,) * (nd + 1)), dtype)
        if self.has_connection_table:
            weight *= self._mask_like(weight)
        self._add_param("weight", weight)
        if bias:
            self._add_param("bias", uniform_init(rng, (self.out_channels,), bound, dtype))

    def _build_mask(self, connection_table: Any) -> np.ndarray:
        """Boolean (out_channels, in_channels) table of M_j, from the table or from groups."""
        out_c, in_c, groups = self.out_channels, self.in_channels, self.groups
        if connection_table is not None:
            if groups != 1:
                raise ValueError(
                    f"{type(self).__name__}: give connection_table or groups, not both"
                )
            table = np.asarray(connection_table)
            if table.shape != (out_c, in_c):
                raise ValueError(
                    f"{type(self).__name__}: connection_table must have shape "
                    f"(out_channels, in_channels) = {(out_c, in_c)}, got {table.shape}"
                )
            if table.dtype != bool and not np.isin(table, (0, 1)).all():
                raise ValueError(f"{type(self).__name__}: connection_table must be boolean (0/1)")
            return table.astype(bool)
        output_group = np.arange(out_c) // (out_c // groups)
        input_group = np.arange(in_c) // (in_c // groups)
        return output_group[:, None] == input_group[None, :]

    def _mask_like(self, weight: np.ndarray) -> np.ndarray:
        mask = self.connection_mask
        return mask.reshape(mask.shape + (1,) * self.nd).astype(weight.dtype)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": "bias" in self.params,
            "padding_mode": self.padding_mode,
            "flip_kernel": self.flip_kernel,
        }
        if self.has_connection_table:
            config["connection_table"] = self.connection_mask.astype(int).tolist()
        return config

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1,) * self.nd:
            text += f", stride={self.stride}"
        if self.padding != (0,) * self.nd:
            text += f", padding={self.padding!r}"
        if self.dilation != (1,) * self.nd:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self.params:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        if self.has_connection_table:
            mask = self.connection_mask
            text += f", connection_table=<{int(mask.sum())} of {mask.size} connected>"
        if self.flip_kernel:
            text += ", flip_kernel=True"
        return text

    def effective_kernel(self) -> np.ndarray:
        """k_ij as applied to the input by cross-correlation, in the weight's layout
        ((O, C/groups, *kernel_size)): masked to the connection table, if any, and, with
        ``flip_kernel``, rotated by 180°. Exporters use it."""
        kernel = self.params["weight"]
        if self.has_connection_table:
            kernel = kernel * self._mask_like(kernel)
        if self.flip_kernel:
            kernel = self._rot180(kernel)
        return kernel

    def _rot180(self, kernel: np.ndarray) -> np.ndarray:
        """The kernel turned by 180° over its spatial (last nd) axes: the view np.flip
        gives, by slicing, without np.flip's axis checks on every step."""
        return kernel[(..., *(slice(None, None, -1),) * self.nd)]

    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        padded = tuple(s + b + a for s, (b, a) in zip(spatial, self.input_pads))
        return self.geometry.output_shape(padded)

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        """Keeps its input x for ∂E/∂k (with a non-zero ``padding_mode``, its own padded
        copy x̃ instead); the workspace holds the patch and output matrices of one block
        (``_conv_ops``) plus the padded slab and the input gradient's skewed rows, or, where
        F(2x2, 3x3) serves the forward and ∂E/∂x, its buffers instead of the skewed rows."""
        n, _, *spatial = input_shape
        itemsize = np.dtype(self.dtype).itemsize
        out_shape = self.output_shape(tuple(spatial))
        padded = [s + b + a for s, (b, a) in zip(spatial, self.pads)]
        per_sample = (
            (self.in_channels * int(np.prod(self.kernel_size)) + self.out_channels)
            * int(np.prod(out_shape[:1] + tuple(padded[1:])))
            * itemsize
        )
        patches = min(n * per_sample, max(self.workspace.limit_bytes, per_sample))
        slab = patches // int(np.prod(self.kernel_size)) + 1
        x_shape = (n, self.in_channels, *(s + b + a for s, (b, a) in zip(spatial, self.input_pads)))
        limit = self.workspace.limit_bytes
        if _winograd.applies(
            self.geometry, self.groups, x_shape, self.out_channels, itemsize, limit
        ):
            slab += _winograd.workspace_bytes(
                self.geometry, x_shape, self.out_channels, itemsize, limit
            )
        else:
            slab += skewed_bytes(n, self.in_channels, tuple(padded), self.geometry, itemsize)
        if self.padding_mode != "zeros":
            kept = n * self.in_channels * int(np.prod(padded)) * itemsize  # x̃
            return MemoryEstimate(other_bytes=kept, workspace_bytes=patches + slab)
        return MemoryEstimate(keeps_input=True, workspace_bytes=patches + slab)

    def forward(self, x: np.ndarray) -> np.ndarray:
        nd = self.nd
        layout = LAYOUTS[nd].replace("C", str(self.in_channels))
        x = self._check_input(x, ndim=nd + 2, layout=layout, channels=self.in_channels)
        out_shape = self.output_shape(x.shape[2:])
        if min(out_shape) < 1:
            raise ValueError(
                f"{self!r}: kernel (dilated extent "
                f"{tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))}) "
                f"is larger than the padded input; input shape {x.shape}"
            )
        _windows.check_padding_fits(self.pads, x.shape[2:], self.padding_mode)
        x = _windows.pad_spatial_mode(x, self.input_pads, self.padding_mode)  # x̃ = pad(x)
        kernel, bias = self.effective_kernel(), self.params.get("bias")
        # u_j = Σ_{i ∈ M_j} x̃_i * k_ij + b_j
        u = conv_forward(
            x, kernel, bias, self.geometry, groups=self.groups, workspace=self.workspace
        )
        self._remember(x)  # the patches p_i of ∂E/∂k are gathered from x̃ again
        return u

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (x,) = self._recall()
        self._param_grads(x, dy)
        # ∂E/∂x̃_i = Σ_{j: i ∈ M_j} conv(δ_j, rot180(k_ij), 'full'), folded back onto x
        kernel = self.effective_kernel()
        dx = conv_transpose(
            dy, kernel, self.geometry, x.shape[2:], groups=self.groups, workspace=self.workspace
        )
        return _windows.fold_padding(dx, self.input_pads, self.padding_mode)

    def backward_params(self, dy: np.ndarray) -> None:
        (x,) = self._recall()
        self._param_grads(x, dy)

    def _param_grads(self, x: np.ndarray, dy: np.ndarray) -> None:
        """Fill ∂E/∂b and ∂E/∂k from the (padded) input x̃ and δ = dy."""
        out_shape = self.geometry.output_shape(x.shape[2:])
        dy = self._check_grad_output(dy, (len(x), self.out_channels, *out_shape))
        if "bias" in self.params:
            self.grads["bias"][...] = map_sums(dy)  # Σ_uv δ_j
        # ∂E/∂k_ij = Σ_uv δ_j · p_i
        dkernel = conv_weight_grad(
            x, dy, self.geometry, groups=self.groups, workspace=self.workspace
        )
        if self.flip_kernel:
            dkernel = self._rot180(dkernel)
        if self.has_connection_table:
            dkernel = dkernel * self._mask_like(dkernel)  # only i ∈ M_j learn
        self.grads["weight"][...] = dkernel


@optional_batch_axis
class Conv1d(_ConvNd):
    """1-D convolution over (N, C, L), e.g. a time-delay network (SPEC §6). See _ConvNd."""

    nd = 1


@optional_batch_axis
class Conv2d(_ConvNd):
    """2-D convolution over (N, C, H, W) with optional connection table M_j (SPEC §2).

    u_j = Σ_{i ∈ M_j} x_i * k_ij + b_j; weight (out_channels, in_channels/groups, kH, kW).
    Full equations and the implementation are described on ``_ConvNd``.
    """

    nd = 2


@optional_batch_axis
class Conv3d(_ConvNd):
    """3-D convolution over (N, C, D, H, W): volumes or video (SPEC §6). See _ConvNd."""

    nd = 3
