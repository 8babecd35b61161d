"""PyTorch round trip: ``to_torch(model)`` and ``from_torch(module)``, weights copied.

``to_torch`` turns a convnp ``Sequential`` into a ``torch.nn.Sequential`` that computes the
same function (forward and gradients, in training and eval mode), one torch module per
convnp layer, so ``"3.weight"`` names the same array in both libraries and a model can be
fine-tuned in either. Layers with a torch equivalent become that module; the rest become
the small modules defined below (``ConvNd``, ``Subsample2d``, ``ScaledTanh``,
``WeightedAvgPool2d``, ``FeatureMapCombination``, ``LocallyConnected2d``, ``EuclideanRBF``),
whose parameters have convnp's names and shapes. ``from_torch`` maps both kinds back.

Mapping notes:

* Conv: plain ``nn.ConvNd`` (the same weight layout, (O, C/groups, *k); stride-1
  "same"/"valid" padding stays a string). ``ConvNd`` is used for a
  connection table, ``flip_kernel=True`` or asymmetric padding with stride > 1;
  ``padding_mode`` travels both ways (F.pad's mode in ``ConvNd``).
* ConvTranspose: ``nn.ConvTransposeNd`` both ways (the same arguments and weight layout).
* ``GlobalAvgPool2d``/``GlobalMaxPool2d`` become ``nn.AdaptiveAvg/MaxPool2d(1)`` and come
  back as the adaptive layer (the same function).
* ``FeatureMapCombination`` sparsity penalties do not run in torch (a torch training loop
  would add them to its loss); the settings survive the round trip. Dropout draws its own
  masks in each library: training-mode outputs agree in distribution, not draw by draw.
* Refused by ``from_torch``, with the module named: any module without a convnp
  counterpart, ``Softmax(dim=None)``,
  pools with ``return_indices=True``, non-float32/64 weights.

Needs PyTorch (the CPU wheel is enough); without it, importing this module says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "convnp.interop.torch needs PyTorch: pip install torch (the CPU wheel is enough)"
    ) from error

from convnp import io
from convnp import layers as L
from convnp.layers.base import Layer
from convnp.layers.combine import FeatureMapCombination as _FeatureMapCombination
from convnp.layers.dropout import Dropout, Dropout2d
from convnp.layers.local import LocallyConnected2d as _LocallyConnected2d
from convnp.layers.normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d
from convnp.layers.rbf import EuclideanRBF as _EuclideanRBF
from convnp.model import Sequential

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
# a convolution's padding_mode -> F.pad's mode
_TORCH_PAD_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}


def _torch_pads(pads: Iterable[tuple[int, int]]) -> list[int]:
    """convnp's (before, after) per axis, first axis first -> F.pad's last-axis-first list."""
    return [size for before_after in reversed(tuple(pads)) for size in before_after]


# -- torch modules for what torch.nn lacks ----------------------------------------------
class _Wrapper(nn.Module):
    """Remembers the convnp layer class and config it came from, for ``from_torch``."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.convnp_type = type(layer)
        self.convnp_config = layer.config()

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.convnp_config.items())

    def _adopt(self, layer: Layer, *keys: str) -> None:
        """Register layer.params[key] under the same name (None if the layer lacks it)."""
        for key in keys:
            value = layer.params.get(key)
            tensor = None if value is None else nn.Parameter(torch.from_numpy(value.copy()))
            self.register_parameter(key, tensor)


class ConvNd(_Wrapper):
    """convnp's convolution (any nd) with a connection table M_j, ``flip_kernel`` or
    asymmetric padding: weight stored as convnp stores it ((O, C, *k) with a table, masked
    to M_j in forward; (O, C/groups, *k) with groups), rotated by 180° in forward (so
    gradients are convnp's), padding (any ``padding_mode``) done by F.pad."""

    def __init__(self, layer: Layer) -> None:
        super().__init__(layer)
        self.nd, self.stride, self.dilation = len(layer.kernel_size), layer.stride, layer.dilation
        self.flip_kernel, self.groups = layer.flip_kernel, layer.groups
        self.pads = _torch_pads(layer.pads)
        self.pad_mode = _TORCH_PAD_MODES[layer.padding_mode]
        mask = None
        if layer.has_connection_table:
            table = layer.connection_mask.reshape(layer.connection_mask.shape + (1,) * self.nd)
            mask = torch.from_numpy(table.astype(layer.params["weight"].dtype))
        self.register_buffer("mask", mask)
        self._adopt(layer, "weight", "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.weight if self.mask is None else self.weight * self.mask  # only i ∈ M_j
        if self.flip_kernel:
            kernel = kernel.flip(tuple(range(2, 2 + self.nd)))  # true convolution
        convolve = _CONVOLUTIONS[self.nd]
        padded = F.pad(x, self.pads, mode=self.pad_mode)
        return convolve(padded, kernel, self.bias, self.stride, 0, self.dilation, self.groups)


class Subsample2d(_Wrapper):
    """Bouvrie's x_j = β_j · down(x_j) + b_j; down() is a block sum (divisor 1)."""

    def __init__(self, layer: Layer) -> None:
        super().__init__(layer)
        self.kernel_size = layer.kernel_size
        self._adopt(layer, "beta", "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block_sum = F.avg_pool2d(x, self.kernel_size, divisor_override=1)
        return self.beta[:, None, None] * block_sum + self.bias[:, None, None]


class ScaledTanh(_Wrapper):
    """LeCun's 1.7159 · tanh(2x/3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return L.ScaledTanh.A * torch.tanh(x * L.ScaledTanh.B)


class WeightedAvgPool2d(_Wrapper):
    """Gaussian-weighted average pooling: a depthwise conv with the fixed weights w, divided
    by convnp's Z(o); the geometry (ceil_mode overhang, Z) is taken from the convnp layer."""

    def __init__(self, layer: Layer) -> None:
        super().__init__(layer)
        self.geometry = layer  # parameter-free: only its window arithmetic is used
        self.register_buffer("window", torch.from_numpy(layer.window_weights(np.float64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        divisor = self.geometry.window_divisor(spatial)  # Z(o)
        channels = x.shape[1]
        kernel = self.window.to(x.dtype).expand(channels, 1, *self.window.shape)
        padded = F.pad(x, _torch_pads(self.geometry.window_pads(spatial)))
        window_sum = F.conv2d(padded, kernel, stride=self.geometry.stride, groups=channels)
        return window_sum / torch.as_tensor(divisor, dtype=x.dtype, device=x.device)


class FeatureMapCombination(_Wrapper):
    """u_j = Σ_i α_ij (x_i * k_ij) + b_j, α = softmax over i of alpha_logits, as one conv
    with kernel α_ij·k_ij (per_input: k_i = weight[i, 0], convnp's depthwise storage)."""

    def __init__(self, layer: Layer) -> None:
        super().__init__(layer)
        self.per_input = layer.kernels == "per_input"
        self.flip_kernel, self.stride = layer.flip_kernel, layer.stride
        self.dilation, self.pads = layer.dilation, _torch_pads(layer.pads)
        self._adopt(layer, "weight", "alpha_logits", "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.softmax(self.alpha_logits, dim=1)
        kernel = self.weight
        if self.per_input:
            kernel = kernel[:, 0][None]  # k_i: convnp stores (C_in, 1, kH, kW)
        kernel = alpha[:, :, None, None] * kernel  # α_ij k_ij
        if self.flip_kernel:
            kernel = kernel.flip((2, 3))
        return F.conv2d(F.pad(x, self.pads), kernel, self.bias, self.stride, 0, self.dilation)


class LocallyConnected2d(_Wrapper):
    """Unshared kernels per output position: F.unfold, then one batched product."""

    def __init__(self, layer: Layer) -> None:
        super().__init__(layer)
        self.kernel_size, self.stride = layer.kernel_size, layer.stride
        self.output_size, self.pads = layer.output_size, _torch_pads(layer.pads)
        self._adopt(layer, "weight", "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(F.pad(x, self.pads), self.kernel_size, stride=self.stride)  # (N, CK, L)
        positions, out_channels = cols.shape[2], self.weight.shape[2]
        kernels = self.weight.reshape(positions, out_channels, -1)  # k^{pq}: (L, O, CK)
        u = torch.einsum("lok,nkl->nol", kernels, cols).reshape(-1, out_channels, *self.output_size)
        return u if self.bias is None else u + self.bias


class EuclideanRBF(_Wrapper):
    """y_i = Σ_j (x_j − w_ij)², LeNet-5's output units."""

    def __init__(self, layer: Layer) -> None:
        super().__init__(layer)
        self._adopt(layer, "weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x[:, None, :] - self.weight[None]) ** 2).sum(dim=2)


# -- convnp -> torch ----------------------------------------------------------------------
def _conv_to_torch(layer: Layer) -> nn.Module:
    """nn.ConvNd when torch can express the layer exactly, else the ConvNd wrapper."""
    if layer.has_connection_table or layer.flip_kernel:
        return ConvNd(layer)
    pads = layer.pads
    stride_one = all(s == 1 for s in layer.stride)
    if isinstance(layer.padding, str) and layer.padding != "full" and stride_one:
        padding = layer.padding  # torch's "same" puts the odd pixel after, as convnp does
    elif all(before == after for before, after in pads):
        padding = tuple(before for before, _ in pads)
    else:
        return ConvNd(layer)  # asymmetric padding with stride > 1
    module_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(layer.kernel_size)]
    module = module_type(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        padding,
        layer.dilation,
        layer.groups,
        "bias" in layer.params,
        layer.padding_mode,
    )
    return _loaded(module, layer.params)  # the same (O, C/groups, *k) weight layout


def _conv_transpose_to_torch(layer: Layer) -> nn.Module:
    """The same constructor arguments and weight layout in both libraries."""
    module_type = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[layer.nd - 1]
    return _loaded(module_type(**layer.config()), layer.params)


def _loaded(module: nn.Module, arrays: dict[str, np.ndarray]) -> nn.Module:
    """Copy convnp arrays into the module's parameters/buffers of the same names (the
    module takes their dtype first, so float64 weights are never rounded)."""
    for value in arrays.values():
        module.to(_TORCH_DTYPES[value.dtype])
        break
    state = module.state_dict()
    with torch.no_grad():
        for key, value in arrays.items():
            state[key].copy_(torch.from_numpy(np.require(value, requirements="C")))  # 0-d stays
    return module


def _with_state(build: Callable[[Layer], nn.Module]) -> Callable[[Layer], nn.Module]:
    """A converter for a torch.nn module whose parameters and buffers share convnp's names."""
    return lambda layer: _loaded(build(layer), {**layer.params, **layer.buffers})


def _pool_arguments(layer: Layer, *names: str) -> dict[str, Any]:
    """The layer's attributes by torch's argument names; 1-tuples as ints (torch's 1-d
    LP pool multiplies by kernel_size, so it must be a number)."""
    values = {name: getattr(layer, name) for name in names}
    return {
        name: value[0] if isinstance(value, tuple) and len(value) == 1 else value
        for name, value in values.items()
    }


def _batch_norm_to_torch(module_type: type[nn.Module]) -> Callable[[Layer], nn.Module]:
    return _with_state(
        lambda layer: module_type(
            layer.num_features,
            layer.eps,
            layer.momentum,
            layer.affine,
            layer.track_running_stats,
            bias=layer.config().get("bias", True),
        )
    )


# pool constructor arguments, the same names in both libraries
_MAX = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
_LP = ("norm_type", "kernel_size", "stride", "ceil_mode")
TO_TORCH: dict[type[Layer], Callable[[Layer], nn.Module]] = {
    **dict.fromkeys((L.Conv1d, L.Conv2d, L.Conv3d), _conv_to_torch),
    **dict.fromkeys(
        (L.ConvTranspose1d, L.ConvTranspose2d, L.ConvTranspose3d), _conv_transpose_to_torch
    ),
    L.MaxPool1d: lambda layer: nn.MaxPool1d(**_pool_arguments(layer, *_MAX)),
    L.MaxPool2d: lambda layer: nn.MaxPool2d(**_pool_arguments(layer, *_MAX)),
    L.MaxPool3d: lambda layer: nn.MaxPool3d(**_pool_arguments(layer, *_MAX)),
    L.AvgPool1d: lambda layer: nn.AvgPool1d(**_pool_arguments(layer, *_AVG)),
    L.AvgPool2d: lambda layer: nn.AvgPool2d(**_pool_arguments(layer, *_AVG, "divisor_override")),
    L.AvgPool3d: lambda layer: nn.AvgPool3d(**_pool_arguments(layer, *_AVG, "divisor_override")),
    L.LPPool1d: lambda layer: nn.LPPool1d(**_pool_arguments(layer, *_LP)),
    L.LPPool2d: lambda layer: nn.LPPool2d(**_pool_arguments(layer, *_LP)),
    L.LPPool3d: lambda layer: nn.LPPool3d(**_pool_arguments(layer, *_LP)),
    L.AdaptiveAvgPool1d: lambda layer: nn.AdaptiveAvgPool1d(layer.output_size),
    L.AdaptiveAvgPool2d: lambda layer: nn.AdaptiveAvgPool2d(layer.output_size),
    L.AdaptiveAvgPool3d: lambda layer: nn.AdaptiveAvgPool3d(layer.output_size),
    L.AdaptiveMaxPool1d: lambda layer: nn.AdaptiveMaxPool1d(layer.output_size),
    L.AdaptiveMaxPool2d: lambda layer: nn.AdaptiveMaxPool2d(layer.output_size),
    L.AdaptiveMaxPool3d: lambda layer: nn.AdaptiveMaxPool3d(layer.output_size),
    L.GlobalAvgPool2d: lambda layer: nn.AdaptiveAvgPool2d(1),
    L.GlobalMaxPool2d: lambda layer: nn.AdaptiveMaxPool2d(1),
    L.WeightedAvgPool2d: WeightedAvgPool2d,
    L.Subsample2d: Subsample2d,
    _FeatureMapCombination: FeatureMapCombination,
    _LocallyConnected2d: LocallyConnected2d,
    L.Linear: _with_state(lambda layer: nn.Linear(**layer.config())),
    L.Flatten: lambda layer: nn.Flatten(layer.start_dim, layer.end_dim),
    L.Upsample: lambda layer: nn.Upsample(
        **_pool_arguments(layer, "size", "scale_factor", "mode", "align_corners")
    ),
    _EuclideanRBF: EuclideanRBF,
    BatchNorm1d: _batch_norm_to_torch(nn.BatchNorm1d),
    BatchNorm2d: _batch_norm_to_torch(nn.BatchNorm2d),
    BatchNorm3d: _batch_norm_to_torch(nn.BatchNorm3d),
    Dropout: lambda layer: nn.Dropout(layer.p),
    Dropout2d: lambda layer: nn.Dropout2d(layer.p),
    L.Sigmoid: lambda layer: nn.Sigmoid(),
    L.Tanh: lambda layer: nn.Tanh(),
    L.ScaledTanh: ScaledTanh,
    L.ReLU: lambda layer: nn.ReLU(),
    L.LeakyReLU: lambda layer: nn.LeakyReLU(layer.negative_slope),
    L.ELU: lambda layer: nn.ELU(layer.alpha),
    L.GELU: lambda layer: nn.GELU(approximate=layer.approximate),
    L.Softmax: lambda layer: nn.Softmax(layer.dim),
}


class InputScaling(nn.Module):
    """(raw − shift) / divisor per channel on raw 0-255 pixels, as the run's training data was
    normalised (``convnp.interop.onnx.input_scaling``), then the converted network ``net``."""

    def __init__(self, normalize: Any, net: nn.Sequential, dtype: torch.dtype) -> None:
        super().__init__()
        from convnp.interop.onnx import input_scaling

        shift, divisor, self.description = input_scaling(normalize)
        self.net = net
        for name, value in (("shift", 0.0 if shift is None else shift),
                            ("divisor", 1.0 if divisor is None else divisor)):  # fmt: skip
            self.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=dtype).reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_channel = (1, -1) + (1,) * (x.ndim - 2)  # one value for all channels broadcasts too
        return self.net((x - self.shift.reshape(per_channel)) / self.divisor.reshape(per_channel))


def to_torch(model: Sequential, *, normalize: Any = None) -> nn.Module:
    """An equivalent ``torch.nn.Sequential`` with the weights copied (same dtype and names),
    in the model's training/eval mode. Raises ValueError naming a layer it cannot convert.

    With ``normalize`` (a run's ``info["normalize"]``) the result is an ``InputScaling``
    module that takes raw 0-255 pixels, as ``convnp predict`` and the ONNX export do; the
    network is its ``.net`` (parameter names gain the prefix "net.").
    """
    modules = []
    for index, layer in enumerate(model):
        convert = TO_TORCH.get(type(layer))
        if convert is None:
            raise ValueError(
                f"to_torch: layer {index} ({layer!r}) has no torch counterpart; convertible: "
                + ", ".join(sorted(cls.__name__ for cls in TO_TORCH))
            )
        modules.append(convert(layer))
    net = nn.Sequential(*modules).train(model.training)  # each module has its arrays' dtype
    if normalize is None:
        return net
    dtype = torch.float64 if model.dtype == np.float64 else torch.float32
    return InputScaling(normalize, net, dtype).train(model.training)


# -- torch -> convnp ----------------------------------------------------------------------
# A converter returns (convnp class, constructor config, arrays by convnp name); the layer
# is built through ``io.build`` (so configs are the same JSON-able ones a model file holds).
Converted = tuple[type[Layer], dict[str, Any], dict[str, Any]]


def _conv_from_torch(module: nn.Module) -> Converted:
    padding = module.padding if isinstance(module.padding, str) else list(module.padding)
    config = {
        "in_channels": module.in_channels,
        "out_channels": module.out_channels,
        "kernel_size": list(module.kernel_size),
        "stride": list(module.stride),
        "padding": padding,
        "dilation": list(module.dilation),
        "groups": module.groups,
        "bias": module.bias is not None,
        "padding_mode": module.padding_mode,
    }
    classes = {1: L.Conv1d, 2: L.Conv2d, 3: L.Conv3d}
    return classes[len(module.kernel_size)], config, _arrays(module)  # the same weight layout


def _conv_transpose_from_torch(module: nn.Module) -> Converted:
    names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding")
    config = {name: getattr(module, name) for name in (*names, "groups", "dilation")}
    layer_type = (L.ConvTranspose1d, L.ConvTranspose2d, L.ConvTranspose3d)[module.weight.ndim - 3]
    return layer_type, {**config, "bias": module.bias is not None}, _arrays(module)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _arrays(module: nn.Module) -> dict[str, np.ndarray]:
    """Parameters and running statistics under their (shared) names."""
    state = module.state_dict()
    return {key: _numpy(value) for key, value in state.items() if key != "num_batches_tracked"}


def _attributes(layer_type: type[Layer], *names: str) -> Callable[[nn.Module], Converted]:
    """A converter for a parameter-free module whose arguments keep their torch names."""

    def convert(module: nn.Module) -> Converted:
        if getattr(module, "return_indices", False):
            raise ValueError("return_indices=True has no convnp counterpart")
        return layer_type, {name: getattr(module, name) for name in names}, {}

    return convert


def _from_wrapper(module: _Wrapper) -> Converted:
    parameters = {key: _numpy(value) for key, value in module.named_parameters()}
    return module.convnp_type, dict(module.convnp_config), parameters


def _batch_norm_from_torch(layer_type: type[Layer]) -> Callable[[nn.Module], Converted]:
    def convert(module: nn.Module) -> Converted:
        names = ("num_features", "eps", "momentum", "affine", "track_running_stats")
        config = {name: getattr(module, name) for name in names}
        if module.affine and module.bias is None:
            config["bias"] = False
        arrays = _arrays(module)
        if module.momentum is None and module.track_running_stats:  # the count α = 1/t needs
            arrays["num_batches_tracked"] = np.array(float(module.num_batches_tracked))
        return layer_type, config, arrays

    return convert


def _gelu_from_torch(module: nn.Module) -> Converted:
    return L.GELU, {"approximate": module.approximate}, {}


def _flatten_from_torch(module: nn.Module) -> Converted:
    return L.Flatten, {"start_dim": module.start_dim, "end_dim": module.end_dim}, {}


def _upsample_from_torch(module: nn.Module) -> Converted:
    if module.recompute_scale_factor:
        raise ValueError("recompute_scale_factor=True has no convnp counterpart")
    names = ("size", "scale_factor", "mode", "align_corners")
    return L.Upsample, {name: getattr(module, name) for name in names}, {}


def _softmax_from_torch(module: nn.Module) -> Converted:
    if module.dim is None:
        raise ValueError("dim=None (torch's implicit, deprecated axis choice) is ambiguous")
    return L.Softmax, {"dim": module.dim}, {}


def _linear_from_torch(module: nn.Module) -> Converted:
    config = {"in_features": module.in_features, "out_features": module.out_features}
    return L.Linear, {**config, "bias": module.bias is not None}, _arrays(module)


FROM_TORCH: dict[type[nn.Module], Callable[[nn.Module], Converted]] = {
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d), _conv_from_torch),
    **dict.fromkeys(
        (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _conv_transpose_from_torch
    ),
    nn.MaxPool1d: _attributes(L.MaxPool1d, *_MAX),
    nn.MaxPool2d: _attributes(L.MaxPool2d, *_MAX),
    nn.MaxPool3d: _attributes(L.MaxPool3d, *_MAX),
    nn.AvgPool1d: _attributes(L.AvgPool1d, *_AVG),
    nn.AvgPool2d: _attributes(L.AvgPool2d, *_AVG, "divisor_override"),
    nn.AvgPool3d: _attributes(L.AvgPool3d, *_AVG, "divisor_override"),
    nn.LPPool1d: _attributes(L.LPPool1d, *_LP),
    nn.LPPool2d: _attributes(L.LPPool2d, *_LP),
    nn.LPPool3d: _attributes(L.LPPool3d, *_LP),
    nn.AdaptiveAvgPool1d: _attributes(L.AdaptiveAvgPool1d, "output_size"),
    nn.AdaptiveAvgPool2d: _attributes(L.AdaptiveAvgPool2d, "output_size"),
    nn.AdaptiveAvgPool3d: _attributes(L.AdaptiveAvgPool3d, "output_size"),
    nn.AdaptiveMaxPool1d: _attributes(L.AdaptiveMaxPool1d, "output_size"),
    nn.AdaptiveMaxPool2d: _attributes(L.AdaptiveMaxPool2d, "output_size"),
    nn.AdaptiveMaxPool3d: _attributes(L.AdaptiveMaxPool3d, "output_size"),
    nn.Linear: _linear_from_torch,
    nn.Flatten: _flatten_from_torch,
    nn.Upsample: _upsample_from_torch,
    nn.BatchNorm1d: _batch_norm_from_torch(BatchNorm1d),
    nn.BatchNorm2d: _batch_norm_from_torch(BatchNorm2d),
    nn.BatchNorm3d: _batch_norm_from_torch(BatchNorm3d),
    nn.Dropout: _attributes(Dropout, "p"),
    nn.Dropout2d: _attributes(Dropout2d, "p"),
    nn.Sigmoid: _attributes(L.Sigmoid),
    nn.Tanh: _attributes(L.Tanh),
    nn.ReLU: _attributes(L.ReLU),
    nn.LeakyReLU: _attributes(L.LeakyReLU, "negative_slope"),
    nn.ELU: _attributes(L.ELU, "alpha"),
    nn.GELU: _gelu_from_torch,
    nn.Softmax: _softmax_from_torch,
    **dict.fromkeys(
        (
            ConvNd,
            Subsample2d,
            ScaledTanh,
            WeightedAvgPool2d,
            FeatureMapCombination,
            LocallyConnected2d,
            EuclideanRBF,
        ),
        _from_wrapper,
    ),
}


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The modules of a (possibly nested) nn.Sequential, in order; a single module alone."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def from_torch(module: nn.Module, *, rng: np.random.Generator | None = None) -> Sequential:
    """A convnp ``Sequential`` computing what ``module`` computes, weights copied.

    ``module`` is an ``nn.Sequential`` (nested ones are flattened in order) or a single
    module, made of the modules in ``FROM_TORCH``: the torch.nn layers convnp has and the
    wrappers ``to_torch`` creates. dtype (float32/float64) and train/eval mode carry over;
    ``rng`` is what dropout layers will draw their masks from.
    Raises ValueError naming the first module that cannot be converted, and why.
    """
    tensors = (*module.parameters(), *module.buffers())
    floating = [tensor.dtype for tensor in tensors if tensor.is_floating_point()]
    torch_dtype = floating[0] if floating else torch.float32
    dtypes = {value: key for key, value in _TORCH_DTYPES.items()}
    if torch_dtype not in dtypes:
        raise ValueError(f"from_torch: weights must be float32 or float64, got {torch_dtype}")
    dtype = dtypes[torch_dtype]
    layers = []
    for index, leaf in enumerate(_leaves(module)):
        convert = FROM_TORCH.get(type(leaf))
        try:
            if convert is None:
                raise ValueError(
                    "no convnp counterpart; convertible: "
                    + ", ".join(sorted(cls.__name__ for cls in FROM_TORCH))
                )
            layer_type, config, arrays = convert(leaf)
        except ValueError as error:
            raise ValueError(f"from_torch: module {index} ({leaf!r}): {error}") from None
        spec = [{"type": layer_type.__name__, "config": config}]
        layer = io.build(spec, dtype=dtype, rng=rng)[0]
        for key, value in arrays.items():
            store = layer.params if key in layer.params else layer.buffers
            store[key][...] = value
        layers.append(layer)
    return Sequential(*layers).train(module.training)
