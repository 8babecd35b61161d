"""ONNX export: a convnp Sequential as a standard ONNX graph (opset ``OPSET``).

Each layer class maps to one small converter function in ``CONVERTERS``; a converter
receives the graph being built, the layer, the name of its input tensor and the input's
shape without the batch axis, and returns the name of its output tensor. Adding a layer
to the exporter is adding one function and one table entry.

The exported graph computes the layer's *eval-mode* forward exactly as convnp does, in
float32 (or float64), with a dynamic batch axis ("batch"). Where an ONNX operator's
conventions differ from convnp's in an edge case (a ``ceil_mode`` window hanging past the
border, a divisor override, Gaussian weights, odd or fractional L^p powers) the converter
spells the layer out with elementary operators instead, so the numbers always agree.
Initializers are named like ``Sequential.state_dict()`` ("0.weight"), so a file can be
traced back to the model.

``onnx`` is an optional dependency (``pip install 'convnp[onnx]'``), imported only when
a function here runs.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import convnp
from convnp import io
from convnp import layers as L
from convnp.layers.base import Layer
from convnp.layers.combine import FeatureMapCombination
from convnp.layers.dropout import Dropout, Dropout2d
from convnp.layers.local import LocallyConnected2d
from convnp.layers.normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d
from convnp.layers.rbf import EuclideanRBF
from convnp.model import Sequential

OPSET = 17  # ONNX 1.12+ and onnxruntime 1.12+ run it; every operator used here exists in it
INPUT_NAME = "input"
OUTPUT_NAME = "output"


class ExportError(ValueError):
    """A layer (or a layer at this input size) has no exact ONNX form; the message says why."""


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "ONNX export needs the optional package onnx: pip install 'convnp[onnx]'"
        ) from None
    return onnx


class _Graph:
    """The nodes and initializers of the graph being built, with unique tensor names."""

    def __init__(self, onnx: Any, dtype: np.dtype, opset: int = OPSET) -> None:
        self.onnx = onnx
        self.dtype = dtype
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.prefix = ""  # "<layer index>." while a layer is converted
        self._count = 0
        self._constants: set[str] = set()

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def constant(
        self, value: Any, name: str = "const", *, integer: bool = False, dtype: Any = None
    ) -> str:
        """Add an initializer (in ``dtype``, else the graph's, or int64 for shapes); return its
        name, "<layer index>.<name>" (a counter is appended if the layer already used it)."""
        array = np.asarray(value, dtype=dtype or (np.int64 if integer else self.dtype))
        name = self._name(name) if f"{self.prefix}{name}" in self._constants else self.prefix + name
        self._constants.add(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], **attributes: Any) -> str:
        """Append one operator node; return the name of its (single) output."""
        output = self._name(op)
        self.nodes.append(
            self.onnx.helper.make_node(op, inputs, [output], name=output, **attributes)
        )
        return output


Converter = Callable[[_Graph, Layer, str, tuple[int, ...]], str]


# -- convolution ------------------------------------------------------------------------
def _conv_node(
    g: _Graph,
    x: str,
    kernel: np.ndarray,
    bias: Any,
    *,
    stride: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
    dilation: tuple[int, ...] | None = None,
    groups: int = 1,
) -> str:
    """A Conv node; ``pads`` are convnp's (before, after) per axis, possibly asymmetric."""
    inputs = [x, g.constant(kernel, "weight")]
    if bias is not None:
        inputs.append(g.constant(bias, "bias"))
    before, after = zip(*pads)
    return g.node(
        "Conv",
        inputs,
        kernel_shape=list(kernel.shape[2:]),
        strides=list(stride),
        dilations=list(dilation or (1,) * len(stride)),
        pads=[*before, *after],
        group=groups,
    )


# a convolution's padding_mode -> ONNX Pad's mode (and the opset that has it)
_ONNX_PAD_MODES = {"reflect": ("reflect", 11), "replicate": ("edge", 11), "circular": ("wrap", 19)}


def _pad_node(g: _Graph, x: str, pads: tuple[tuple[int, int], ...], padding_mode: str) -> str:
    """x̃ = pad(x) over the spatial axes with a non-zero ``padding_mode``: one Pad node."""
    mode, since = _ONNX_PAD_MODES[padding_mode]
    if g.opset < since:
        raise ExportError(
            f"padding_mode={padding_mode!r} needs ONNX Pad mode {mode!r}, which exists from "
            f"opset {since}; export with to_onnx(..., opset={since}) (this export: {g.opset})"
        )
    before, after = zip(*pads)
    widths = g.constant([0, 0, *before, 0, 0, *after], "pads", integer=True)
    return g.node("Pad", [x, widths], mode=mode)


def _conv(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """Conv; flip_kernel and connection tables are already in ``effective_kernel()``
    (rot180, unconnected kernels zero). ``groups`` export as a grouped Conv (the same
    (O, C/groups, *k) weight layout). A non-zero ``padding_mode`` is a Pad node before a
    Conv without padding."""
    kernel = layer.effective_kernel()
    if layer.padding_mode != "zeros":
        x = _pad_node(g, x, layer.input_pads, layer.padding_mode)
    pads = layer.geometry.pads  # the convolution's own (zero) padding
    geometry = {"stride": layer.stride, "pads": pads, "dilation": layer.dilation}
    return _conv_node(g, x, kernel, layer.params.get("bias"), groups=layer.groups, **geometry)


def _conv_transpose(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """ConvTranspose: the same weight layout (C, M/group, *k) and attributes as PyTorch's.

    ONNX Runtime takes output_padding o only below the stride s; PyTorch also allows it
    below the dilation. Such an axis crops p − o cells at the end instead of p (the same
    cells), and where o > p the last o − p cells, which only the bias reaches, are a Pad
    with zeros followed by the bias."""
    end_pads, output_padding, zeros = [], [], []
    for p, o, s in zip(layer.padding, layer.output_padding, layer.stride):
        end_pads.append(p if o < s else max(p - o, 0))
        output_padding.append(o if o < s else 0)
        zeros.append(0 if o < s else max(o - p, 0))
    bias = layer.params.get("bias")
    inputs = [x, g.constant(layer.params["weight"], "weight")]
    if bias is not None and not any(zeros):
        inputs.append(g.constant(bias, "bias"))
    y = g.node(
        "ConvTranspose",
        inputs,
        kernel_shape=list(layer.kernel_size),
        strides=list(layer.stride),
        pads=[*layer.padding, *end_pads],
        output_padding=output_padding,
        dilations=list(layer.dilation),
        group=layer.groups,
    )
    if not any(zeros):
        return y
    widths = g.constant([0, 0, *(0,) * layer.nd, 0, 0, *zeros], "pads", integer=True)
    y = g.node("Pad", [y, widths])
    if bias is None:
        return y
    return g.node("Add", [y, g.constant(bias.reshape(-1, *(1,) * layer.nd), "bias")])


def _feature_map_combination(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """u_j = Σ_i α_ij (x_i * k_ij) + b_j = Σ_i x_i * (α_ij k_ij) + b_j: one Conv whose kernel
    is α_ij·k_ij (per_input kernels k_i are shared by every j), rotated if flip_kernel."""
    kernel = layer.effective_kernel()
    geometry = {"stride": layer.stride, "pads": layer.pads, "dilation": layer.dilation}
    return _conv_node(g, x, kernel, layer.params.get("bias"), **geometry)


def _locally_connected(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """u_j(p,q) = Σ_i Σ_ab k_ij^{pq}(a,b)·x_i(p·s + a, q·s + b) + b_j(p,q), without Unfold.

    A Conv with one-hot kernels copies each patch into C·K channels (exact: every output
    is one product with 1), then one MatMul batched over the L = H_out·W_out positions
    applies each position's own (C·K → O) matrix, as the layer's forward does.
    """
    taps = layer.in_channels * math.prod(layer.kernel_size)  # C·K
    one_hot = np.eye(taps).reshape(taps, layer.in_channels, *layer.kernel_size)
    patches = _conv_node(g, x, one_hot, None, stride=layer.stride, pads=layer.pads)
    positions = math.prod(layer.output_size)
    columns = g.node("Reshape", [patches, _shape(g, 0, taps, positions)])  # (N, C·K, L)
    by_position = g.node("Transpose", [columns], perm=[2, 0, 1])  # (L, N, C·K)
    kernels = layer.params["weight"].reshape(positions, layer.out_channels, taps)
    u = g.node("MatMul", [by_position, g.constant(kernels.transpose(0, 2, 1), "weight")])
    u = g.node("Transpose", [u], perm=[1, 2, 0])  # (N, O, L)
    u = g.node("Reshape", [u, _shape(g, 0, layer.out_channels, *layer.output_size)])
    if "bias" not in layer.params:
        return u
    return g.node("Add", [u, g.constant(layer.params["bias"], "bias")])  # + b_j(p,q)


# -- pooling ----------------------------------------------------------------------------
def _window_attributes(layer: Layer, spatial: tuple[int, ...]) -> dict[str, Any]:
    """kernel_shape, strides and the layer's window padding in ONNX's ``pads`` order
    [befores..., afters...] (ceil_mode's overhang as explicit end pads)."""
    pads = layer.window_pads(spatial)
    return {
        "kernel_shape": list(layer.kernel_size),
        "strides": list(layer.stride),
        "pads": [before for before, _ in pads] + [after for _, after in pads],
    }


def _max_pool(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """MaxPool ignores pad cells, as −∞ padding does; ceil_mode becomes explicit end pads."""
    attributes = _window_attributes(layer, shape[1:])
    return g.node("MaxPool", [x], dilations=list(layer.dilation), **attributes)


def _window_average(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """y(o) = Σ_k w_k x_pad(o·s + k) / D(o) with the layer's weights and divisor.

    AveragePool when its divisor is D: uniform weights, no override, and pad cells either
    counted with no ceil_mode overhang (which ONNX would count too) or not counted at all.
    Otherwise a depthwise Conv with the weights w, divided by the constant map D(o).
    """
    spatial = shape[1:]
    attributes = _window_attributes(layer, spatial)
    weights = layer.window_weights(g.dtype)
    uniform = weights is None and layer.divisor_override is None
    if uniform and not (layer.overhangs(spatial) and layer.count_include_pad):
        include_pad = int(layer.count_include_pad)
        return g.node("AveragePool", [x], count_include_pad=include_pad, **attributes)
    if weights is None:
        weights = np.ones(layer.kernel_size, dtype=g.dtype)
    channels = shape[0]
    kernel = np.broadcast_to(weights, (channels, 1, *layer.kernel_size))  # one w per map
    window_sum = g.node("Conv", [x, g.constant(kernel, "window")], group=channels, **attributes)
    divisor = layer.window_divisor(spatial)  # D(o)
    return g.node("Div", [window_sum, g.constant(divisor, "divisor")])


def _lp_pool(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """LpPool for an even integer p without ceil_mode overhang (then |x|^p = x^p and ONNX's
    window is convnp's); otherwise y = (K · avg(x^p))^(1/p) spelled out, as convnp does."""
    p = layer.norm_type
    if p.is_integer() and p % 2 == 0 and not layer.overhangs(shape[1:]):
        return g.node("LpPool", [x], p=int(p), **_window_attributes(layer, shape[1:]))
    powered = g.node("Pow", [x, g.constant(p)])
    average = _window_average(g, layer, powered, shape)
    total = g.node("Mul", [average, g.constant(math.prod(layer.kernel_size))])  # K · avg(x^p)
    return g.node("Pow", [total, g.constant(1.0 / p)])


def _upsample(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """Resize with PyTorch's source coordinates: nearest = "asymmetric" with floor, linear =
    "align_corners" or "pytorch_half_pixel". A scale factor goes in as ONNX's scales (the
    source coordinate is then j/scale_factor, as PyTorch's), a size as sizes (j·L/L')."""
    spatial = shape[1:]
    out_shape = layer.output_shape(spatial)
    attributes: dict[str, Any] = {"mode": "nearest" if layer.mode == "nearest" else "linear"}
    if layer.mode == "nearest":
        attributes.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif layer.align_corners:
        attributes["coordinate_transformation_mode"] = "align_corners"
    else:
        if any(out == 1 < length for length, out in zip(spatial, out_shape)):
            raise ExportError(
                "an axis resized to 1 samples its centre in PyTorch, its first cell in ONNX"
            )
        attributes["coordinate_transformation_mode"] = "pytorch_half_pixel"
    if layer.scale_factor is not None:
        factors = layer._per_axis(layer.scale_factor, len(spatial))
        if any(np.float32(f) != f for f in factors):
            raise ExportError(f"scale_factor {factors} is not exact in ONNX's float32 scales")
        scales = g.constant([1.0, 1.0, *factors], "scales", dtype=np.float32)
        return g.node("Resize", [x, "", scales], **attributes)
    sizes = g.node(
        "Concat",
        [g.node("Shape", [x], end=2), g.constant(out_shape, "sizes", integer=True)],
        axis=0,
    )
    return g.node("Resize", [x, "", "", sizes], **attributes)


def _adaptive_pool(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...], kind: str) -> str:
    """Adaptive pooling is plain pooling when every output size divides its input size."""
    spatial = shape[1:]
    out_shape = layer.output_shape(spatial)
    if any(size % out for size, out in zip(spatial, out_shape)):
        raise ExportError(
            f"input size {spatial} is not a multiple of output size {out_shape}, so its bins "
            "overlap or differ in size and no standard pooling operator reproduces them; "
            "export at an input size that is a multiple, or use a fixed pooling layer"
        )
    if all(out == 1 for out in out_shape):
        return g.node(f"Global{kind}Pool", [x])
    kernel = [size // out for size, out in zip(spatial, out_shape)]
    return g.node(f"{kind}Pool", [x], kernel_shape=kernel, strides=kernel)


def _subsample(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """x_j = β_j · down(x_j) + b_j with down() = n² · AveragePool (blocks tile the input)."""
    n = list(layer.kernel_size)
    mean = g.node("AveragePool", [x], kernel_shape=n, strides=n)
    per_map = (-1, 1, 1)
    scale = (layer.params["beta"] * math.prod(n)).reshape(per_map)  # β_j · n², folded
    scaled = g.node("Mul", [mean, g.constant(scale, "beta")])
    return g.node("Add", [scaled, g.constant(layer.params["bias"].reshape(per_map), "bias")])


# -- dense, reshaping, normalisation ----------------------------------------------------
def _linear(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    inputs = [x, g.constant(layer.params["weight"], "weight")]
    if "bias" in layer.params:
        inputs.append(g.constant(layer.params["bias"], "bias"))
    return g.node("Gemm", inputs, transB=1)  # x Wᵀ + b


def _shape(g: _Graph, *sizes: int) -> str:
    """A Reshape target; 0 copies the input's axis, which keeps the batch axis dynamic."""
    return g.constant(sizes, "shape", integer=True)


def _flatten(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    first, last = layer.axes(len(shape) + 1)  # shape leaves out the batch axis
    if first == 0:
        raise ExportError("Flatten with start_dim=0 merges the batch axis, which stays dynamic")
    if (first, last) == (1, len(shape)):
        return g.node("Flatten", [x], axis=1)
    # 0 keeps the (dynamic) batch axis; the other sizes are known
    return g.node("Reshape", [x, _shape(g, 0, *shape[: first - 1], -1, *shape[last:])])


def _euclidean_rbf(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """y_i = Σ_j (x_j − w_ij)² with the differences formed explicitly, as the layer does:
    ‖x‖² − 2x·w_i + ‖w_i‖² would lose digits to cancellation when x is near a centre."""
    rows = g.node("Unsqueeze", [x, g.constant([1], "axes", integer=True)])  # (N, 1, J)
    difference = g.node("Sub", [rows, g.constant(layer.params["weight"][None], "weight")])
    squares = g.node("Mul", [difference, difference])
    return g.node("ReduceSum", [squares, g.constant([2], "sum_axes", integer=True)], keepdims=0)


def _batch_norm(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """BatchNormalization with the running statistics (eval mode)."""
    if not layer.track_running_stats:
        raise ExportError(
            "track_running_stats=False normalises with each batch's own statistics even in "
            "eval mode, so an output depends on the rest of its batch; retrain with running "
            "statistics to export"
        )
    channels = layer.num_features
    gamma = layer.params.get("weight", np.ones(channels))  # affine=False: γ = 1, β = 0
    beta = layer.params.get("bias", np.zeros(channels))  # bias=False: β = 0
    inputs = [
        x,
        g.constant(gamma, "weight"),
        g.constant(beta, "bias"),
        g.constant(layer.buffers["running_mean"], "running_mean"),
        g.constant(layer.buffers["running_var"], "running_var"),
    ]
    return g.node("BatchNormalization", inputs, epsilon=layer.eps)


def _identity_in_eval(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """Dropout is the identity in eval mode: no node at all."""
    return x


# -- activations ------------------------------------------------------------------------
def _operator(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...], op: str) -> str:
    return g.node(op, [x])


def _leaky_relu(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    return g.node("LeakyRelu", [x], alpha=layer.negative_slope)


def _elu(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    return g.node("Elu", [x], alpha=layer.alpha)


def _scaled_tanh(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    inner = g.node("Mul", [x, g.constant(layer.B)])  # B·u
    return g.node("Mul", [g.node("Tanh", [inner]), g.constant(layer.A)])  # A·tanh(B·u)


def _gelu(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    """From elementary operators (ONNX's Gelu needs opset 20): u/2 · (1 + erf(u/√2)) for
    approximate="none", u/2 · (1 + tanh(√(2/π)·(u + 0.044715·u³))) for "tanh"."""
    if layer.approximate == "none":
        t = g.node("Erf", [g.node("Mul", [x, g.constant(float(np.sqrt(0.5)))])])
    else:
        cube = g.node("Mul", [g.node("Mul", [x, x]), x])
        inner = g.node("Add", [x, g.node("Mul", [cube, g.constant(layer._K)])])
        t = g.node("Tanh", [g.node("Mul", [inner, g.constant(layer._C)])])
    half_x = g.node("Mul", [x, g.constant(0.5)])
    return g.node("Mul", [half_x, g.node("Add", [t, g.constant(1.0)])])


def _softmax(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...]) -> str:
    return g.node("Softmax", [x], axis=layer.dim)


# The table: exact layer class -> converter. A subclass is not assumed to compute what
# its parent does, so it needs its own entry.
CONVERTERS: dict[type[Layer], Converter] = {
    **dict.fromkeys((L.Conv1d, L.Conv2d, L.Conv3d), _conv),
    **dict.fromkeys((L.ConvTranspose1d, L.ConvTranspose2d, L.ConvTranspose3d), _conv_transpose),
    **dict.fromkeys((L.MaxPool1d, L.MaxPool2d, L.MaxPool3d), _max_pool),
    **dict.fromkeys((L.AvgPool1d, L.AvgPool2d, L.AvgPool3d), _window_average),
    L.WeightedAvgPool2d: _window_average,
    **dict.fromkeys((L.LPPool1d, L.LPPool2d, L.LPPool3d), _lp_pool),
    **dict.fromkeys(
        (L.AdaptiveAvgPool1d, L.AdaptiveAvgPool2d, L.AdaptiveAvgPool3d, L.GlobalAvgPool2d),
        functools.partial(_adaptive_pool, kind="Average"),
    ),
    **dict.fromkeys(
        (L.AdaptiveMaxPool1d, L.AdaptiveMaxPool2d, L.AdaptiveMaxPool3d, L.GlobalMaxPool2d),
        functools.partial(_adaptive_pool, kind="Max"),
    ),
    FeatureMapCombination: _feature_map_combination,
    LocallyConnected2d: _locally_connected,
    L.Subsample2d: _subsample,
    L.Linear: _linear,
    L.Flatten: _flatten,
    L.Upsample: _upsample,
    EuclideanRBF: _euclidean_rbf,
    **dict.fromkeys((BatchNorm1d, BatchNorm2d, BatchNorm3d), _batch_norm),
    Dropout: _identity_in_eval,
    Dropout2d: _identity_in_eval,
    L.Sigmoid: functools.partial(_operator, op="Sigmoid"),
    L.Tanh: functools.partial(_operator, op="Tanh"),
    L.ReLU: functools.partial(_operator, op="Relu"),
    L.LeakyReLU: _leaky_relu,
    L.ELU: _elu,
    L.ScaledTanh: _scaled_tanh,
    L.GELU: _gelu,
    L.Softmax: _softmax,
}


def _converter(layer: Layer, index: int) -> Converter:
    try:
        return CONVERTERS[type(layer)]
    except KeyError:
        exportable = ", ".join(sorted(cls.__name__ for cls in CONVERTERS))
        raise ExportError(
            f"layer {index} ({layer!r}): {type(layer).__name__} cannot be exported to ONNX "
            f"(no converter); exportable layers: {exportable}"
        ) from None


def input_scaling(normalize: Mapping[str, Any] | None) -> tuple[Any, Any, str]:
    """(shift, divisor, description) of the input normalisation a run recorded (its info's
    ``normalize``: kind "unit", "standardize" with per-channel mean/std in pixel units, or
    None), so that net_input = (raw − shift) / divisor on raw 0-255 pixels, exactly as
    ``convnp.data.DataLoader`` computes it; (None, None, ...) when there is none."""
    kind = (normalize or {}).get("kind")
    if kind == "unit":
        return None, 255.0, "raw pixels 0-255, divided by 255 in the graph"
    if kind == "standardize":
        mean, std = normalize.get("mean"), normalize.get("std")
        if mean is None or std is None:
            raise ValueError("input normalisation 'standardize' without its recorded mean/std")
        shown = ", ".join(f"(x - {m:.2f})/{s:.2f}" for m, s in zip(mean, std))
        return mean, std, f"raw pixels 0-255, standardised in the graph per channel: {shown}"
    return None, None, "the network's input as given (no normalisation recorded)"


def _preprocess(g: _Graph, x: str, normalize: Mapping[str, Any], spatial_dims: int) -> str:
    """Sub/Div nodes computing (raw − shift) / divisor per channel (``input_scaling``)."""
    shift, divisor, _ = input_scaling(normalize)
    per_channel = (-1,) + (1,) * spatial_dims
    g.prefix = "input."
    if shift is not None:
        x = g.node("Sub", [x, g.constant(np.reshape(shift, per_channel), "mean")])
    if divisor is not None:
        divisor = np.reshape(divisor, per_channel) if np.ndim(divisor) else divisor
        x = g.node("Div", [x, g.constant(divisor, "divisor")])
    return x


def _output_mapping(g: _Graph, y: str, loss_kind: str) -> str:
    """The scores ``convnp predict`` reports (``convnp.train.output_scores``): softmax of the
    logits, softmax of minus the RBF energies, or a squared-error net's outputs unchanged."""
    g.prefix = "output."
    if loss_kind == "squared_error":
        return y
    if loss_kind == "rbf":
        y = g.node("Neg", [y])
    elif loss_kind != "cross_entropy":
        raise ValueError(f"to_onnx: unknown loss kind {loss_kind!r} for probabilities")
    return g.node("Softmax", [y], axis=1)


def to_onnx(
    model: Sequential,
    path: str | Path | None,
    input_shape: tuple[int, ...],
    *,
    opset: int = OPSET,
    dtype: Any = np.float32,
    metadata: Mapping[str, Any] | None = None,
    normalize: Mapping[str, Any] | None = None,
    probabilities: str | None = None,
) -> Any:
    """Convert ``model`` (its eval-mode forward) to an ONNX model and write it to ``path``.

    Args:
        model: the network; its parameters are copied, the model is not changed.
        path: output file (written atomically), or None to only return the model.
        input_shape: one input without the batch axis, e.g. (1, 28, 28); the batch axis
            of the exported graph is dynamic.
        opset: ONNX opset to declare (>= 17: the operators used here exist since then).
        dtype: element type of the graph: float32 (default, what runtimes accelerate,
            whatever the model's dtype) or float64 (valid ONNX, but onnxruntime's CPU
            provider has no float64 Conv).
        metadata: extra key/value pairs stored in the file's ``metadata_props`` (values
            that are not strings are stored as JSON), e.g. class names and normalisation.
        normalize: the input normalisation the model was trained with (a run's
            ``info["normalize"]``): baked into the graph as Sub/Div nodes so that it takes
            raw 0-255 pixels; the graph's doc string says which input it expects.
        probabilities: a loss kind ("cross_entropy", "rbf", "squared_error"): append the
            output mapping ``convnp predict`` reports (softmax of the logits, softmax of
            minus the RBF energies, squared-error outputs unchanged).

    Returns:
        The ``onnx.ModelProto``, checked with ``onnx.checker``.

    Raises:
        ExportError: naming the first layer that has no exact ONNX form.
        ImportError: if the optional ``onnx`` package is missing.
    """
    onnx = _require_onnx()
    if opset < OPSET:
        raise ValueError(f"to_onnx: opset must be >= {OPSET}, got {opset}")
    input_shape = tuple(int(size) for size in input_shape)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"to_onnx: dtype must be float32 or float64, got {dtype}")
    converters = [_converter(layer, index) for index, layer in enumerate(model)]
    output_shapes = model.output_shapes(input_shape)
    g = _Graph(onnx, dtype, opset)
    x = _preprocess(g, INPUT_NAME, normalize, len(input_shape) - 1) if normalize else INPUT_NAME
    for index, (layer, convert) in enumerate(zip(model, converters)):
        g.prefix = f"{index}."
        shape = output_shapes[index - 1] if index else input_shape
        try:
            x = convert(g, layer, x, shape)
        except ExportError as error:
            raise ExportError(f"layer {index} ({layer!r}): {error}") from None
    if probabilities is not None:
        x = _output_mapping(g, x, probabilities)
    if x == INPUT_NAME:  # nothing but identities: the output still needs its own name
        x = g.node("Identity", [x])
    g.nodes[-1].output[0] = OUTPUT_NAME
    element = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    final_shape = output_shapes[-1] if output_shapes else input_shape
    graph = onnx.helper.make_graph(
        g.nodes,
        "convnp",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, element, ["batch", *input_shape])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, element, ["batch", *final_shape])],
        initializer=g.initializers,
    )
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        producer_name="convnp",
        producer_version=convnp.__version__,
        doc_string=f"input: {input_scaling(normalize)[2]}; output: "
        + ("scores as `convnp predict` reports them" if probabilities else "the network's output")
        + f"\n{model!r}",
    )
    # the oldest IR that can hold this opset, so older runtimes read the file too
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key = str(key)
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        io.write_atomic(Path(path), proto.SerializeToString())
    return proto
