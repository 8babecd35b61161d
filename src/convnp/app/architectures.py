"""Architectures from a compact string (the literature's notation) or a TOML file.

The string grammar follows DeepLearnToolbox and Ciresan et al.: layers joined by "-".

    token            meaning                                              layer(s)
    ---------------  ---------------------------------------------------  ----------------------
    <N>c<K>[p<P>][s<S>]  N maps, K×K kernel, zero padding P, stride S      Conv2d
    <K>s             mean subsampling of K×K blocks (DeepLearnToolbox)     AvgPool2d(K)
    <K>b             Bouvrie's trained subsampling β·down(x) + b           Subsample2d(C, K)
    <K>m[s<S>]       max pooling K×K, stride S (default K)                 MaxPool2d
    <N>f             fully connected, N units (flattens first if needed)   Linear
    sigm tanh stanh relu   activation (stanh = 1.7159·tanh(2x/3))          Sigmoid, Tanh, ...
    bn               batch normalisation of maps, or of features after f   BatchNorm2d/1d
    d<P>             dropout with probability P, e.g. d0.25                Dropout
    gap              global average pooling of each map (SPEC §3)          GlobalAvgPool2d

The output layer, Linear(num_classes), is appended (except after a final ``gap``). If the
string names no activation at all it is read as DeepLearnToolbox does: a sigmoid after every
conv and fully connected layer and on the output, and true convolution (flip_kernel=True), so
``6c5-2s-12c5-2s`` is exactly the classic network of Bouvrie's notes (SPEC §2, §3).
Otherwise activations sit only where written and the output is raw scores (logits).
A string that ends in ``gap`` is a fully convolutional classifier (SPEC §3, variable-size
inputs): its last convolution must have one map per class, the global averages of those
maps are the output scores, and no Linear is appended, so it accepts any input size.

Examples: ``6c5-2s-12c5-2s``, ``32c3p1-relu-2m-64c3p1-relu-2m-128f-relu``,
``32c3p1-bn-relu-2m-d0.25-64c3p1-bn-relu-2m-256f-bn-relu-d0.5`` and the fully
convolutional ``16c3p1-relu-2m-32c3p1-relu-10c1-gap``.

A TOML file lists layers with their constructor arguments:

    [[layers]]
    type = "Conv2d"
    in_channels = 1
    out_channels = 6
    kernel_size = 5
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from convnp import io
from convnp.layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    ScaledTanh,
    Sigmoid,
    Subsample2d,
    Tanh,
)
from convnp.model import Sequential

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ACTIVATIONS: dict[str, type[Layer]] = {
    "sigm": Sigmoid,
    "tanh": Tanh,
    "stanh": ScaledTanh,
    "relu": ReLU,
}
_CONV = re.compile(r"(\d+)c(\d+)(?:p(\d+))?(?:s(\d+))?")
_POOL = re.compile(r"(\d+)([sbm])(?:s(\d+))?")
_DENSE = re.compile(r"(\d+)f")
_DROPOUT = re.compile(r"d(\d*\.?\d+)")
_TOKENS = "<N>c<K>[p<P>][s<S>], <K>s, <K>b, <K>m[s<S>], <N>f, bn, d<P>, gap"
GRAMMAR = _TOKENS + ", " + ", ".join(ACTIVATIONS)
# One layer's weights at most (2^28 values: 1 GiB in float32, twice VGG-16's largest layer):
# a typo such as 99999c99 is an error, not an attempt to allocate terabytes.
MAX_LAYER_PARAMETERS = 2**28
# A TOML architecture file is a few KB. These bound what is parsed, since Python's TOML
# parser takes time and memory quadratic in the parts of a dotted key (a 50 KB key: 50 s, 2 GB).
MAX_TOML_BYTES = 2**20
MAX_TOML_KEYS = 10_000
MAX_DOTTED_KEY_PARTS = 64
_KEY_PART = r"""(?:[\w-]+|"[^"\n]*"|'[^'\n]*')"""
_LONG_DOTTED_KEY = re.compile(
    rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART}){{{MAX_DOTTED_KEY_PARTS},}}"
)


class _ShapeTracker:
    """Follows the (C, H, W) or (features,) shape so each layer gets its input size."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.shape = tuple(input_shape)
        self.layers: list[Layer] = []

    def add(self, layer: Layer) -> None:
        self.layers.append(layer)
        probe = np.zeros((1, *self.shape), dtype=layer.dtype or np.float32)
        layer.eval()
        self.shape = layer.forward(probe).shape[1:]
        layer.train()


def _error(text: str, tokens: list[str], index: int, problem: str) -> ValueError:
    start = sum(len(token) + 1 for token in tokens[:index])
    pointer = " " * start + "^" * max(len(tokens[index]), 1)
    return ValueError(
        f"architecture {text!r}: {problem} (token {index + 1}, {tokens[index]!r})\n"
        f"  {text}\n  {pointer}\n  tokens: {GRAMMAR}"
    )


def from_string(
    text: str,
    input_shape: tuple[int, ...] = (1, 28, 28),
    num_classes: int = 10,
    *,
    dtype: Any = np.float32,
    rng: np.random.Generator | None = None,
) -> Sequential:
    """Build a Sequential from the compact notation above; errors point at the bad token."""
    rng = np.random.default_rng() if rng is None else rng
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"architecture {text!r} is empty; tokens: {GRAMMAR}")
    tokens = text.strip().lower().split("-")
    classic = not any(token in ACTIVATIONS for token in tokens)
    tracker = _ShapeTracker(input_shape)

    def add_classic_sigmoid() -> None:
        if classic:
            tracker.add(Sigmoid())

    for index, token in enumerate(tokens):
        try:
            if match := _CONV.fullmatch(token):
                maps, kernel, padding, stride = (int(g) if g else None for g in match.groups())
                if len(tracker.shape) != 3:
                    raise ValueError("a convolution needs (C, H, W) input, not features")
                _check_layer_size(maps * tracker.shape[0] * kernel * kernel)
                _check_windows(tracker.shape, maps, kernel, 1 if stride is None else stride,
                               padding or 0)  # fmt: skip
                conv = Conv2d(
                    tracker.shape[0],
                    maps,
                    kernel,
                    1 if stride is None else stride,  # s0 is an error, not stride 1
                    padding or 0,
                    flip_kernel=classic,
                    dtype=dtype,
                    rng=rng,
                )
                tracker.add(conv)
                add_classic_sigmoid()
            elif match := _POOL.fullmatch(token):
                size, kind, stride = int(match[1]), match[2], match[3]
                if stride and kind != "m":
                    raise ValueError("only max pooling takes a stride")
                if len(tracker.shape) == 3:
                    step = size if stride is None else int(stride)
                    _check_windows(tracker.shape, tracker.shape[0], size, step, 0)
                if kind == "s":
                    tracker.add(AvgPool2d(size))
                elif kind == "b":
                    tracker.add(Subsample2d(tracker.shape[0], size, dtype=dtype))
                else:
                    tracker.add(MaxPool2d(size, None if stride is None else int(stride)))
            elif match := _DENSE.fullmatch(token):
                if len(tracker.shape) != 1:
                    tracker.add(Flatten())
                _check_layer_size(tracker.shape[0] * int(match[1]))
                tracker.add(Linear(tracker.shape[0], int(match[1]), dtype=dtype, rng=rng))
                add_classic_sigmoid()
            elif token in ACTIVATIONS:
                tracker.add(ACTIVATIONS[token]())
            elif token == "bn":
                norm = BatchNorm2d if len(tracker.shape) == 3 else BatchNorm1d
                tracker.add(norm(tracker.shape[0], dtype=dtype))
            elif match := _DROPOUT.fullmatch(token):
                # its own generator, so each dropout layer's state is saved and resumed alone
                tracker.add(Dropout(float(match[1]), rng=rng.spawn(1)[0]))
            elif token == "gap":
                if len(tracker.shape) != 3:
                    raise ValueError("global average pooling needs (C, H, W) maps, not features")
                if index == len(tokens) - 1 and tracker.shape[0] != num_classes:
                    raise ValueError(
                        f"a fully convolutional classifier needs {num_classes} maps (one per "
                        f"class) before the final gap, got {tracker.shape[0]}"
                    )
                tracker.add(GlobalAvgPool2d())
            else:
                raise ValueError("unknown token")
        except ValueError as error:
            raise _error(text, tokens, index, str(error).splitlines()[0]) from None
    if len(tracker.shape) != 1:
        tracker.add(Flatten())
    if tokens[-1] != "gap":
        try:
            _check_layer_size(tracker.shape[0] * num_classes)
        except ValueError as error:
            raise ValueError(f"architecture {text!r}: the output layer: {error}") from None
        tracker.add(Linear(tracker.shape[0], num_classes, dtype=dtype, rng=rng))
    add_classic_sigmoid()
    return Sequential(*tracker.layers)


def _check_windows(
    shape: tuple[int, ...], maps: int, kernel: int, stride: int, padding: int
) -> None:
    """What a K×K window layer (conv or pooling) on one (C, H, W) input allocates, bounded
    before it is built and probed: the padded input, its patches and the output maps."""
    if kernel < 1 or stride < 1:
        return  # the layer's constructor says why
    channels, height, width = shape
    padded = (height + 2 * padding, width + 2 * padding)
    positions = math.prod(max((size - kernel) // stride + 1, 0) for size in padded)
    for what, values in (
        ("padded maps", channels * padded[0] * padded[1]),
        ("patches", channels * kernel * kernel * positions),
        ("output maps", maps * positions),
    ):
        if values > MAX_LAYER_PARAMETERS:
            raise ValueError(f"{what} of {values:,} values (at most {MAX_LAYER_PARAMETERS:,})")


def _check_layer_size(parameters: int) -> None:
    if parameters > MAX_LAYER_PARAMETERS:
        raise ValueError(
            f"this layer would have {parameters:,} weights (at most {MAX_LAYER_PARAMETERS:,})"
        )


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a small TOML file defensively: size, key count and dotted-key length are
    bounded before parsing; every problem is a ValueError naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_TOML_BYTES + 1)
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror or error})") from None
    if len(data) > MAX_TOML_BYTES:
        raise ValueError(f"{path}: larger than {MAX_TOML_BYTES:,} bytes; not an architecture file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    if text.count("=") > MAX_TOML_KEYS:
        raise ValueError(f"{path}: more than {MAX_TOML_KEYS:,} keys; not an architecture file")
    if _LONG_DOTTED_KEY.search(text):
        raise ValueError(f"{path}: a dotted key of more than {MAX_DOTTED_KEY_PARTS} parts")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: cannot read TOML ({error})") from None
    except RecursionError:
        raise ValueError(f"{path}: arrays or tables nested too deeply") from None


def from_toml(
    path: str | Path, *, dtype: Any = np.float32, rng: np.random.Generator | None = None
) -> Sequential:
    """Build a Sequential from a TOML file with one ``[[layers]]`` table per layer.

    Each table's ``type`` names a layer class and its other keys are the constructor's
    arguments, checked as a model file's are (``convnp.io.check_architecture``: known
    names, value types, finite numbers); each layer's weights are bounded by
    ``MAX_LAYER_PARAMETERS``. Errors are ValueErrors naming the file and the layer.
    """
    path = Path(path)
    layers = read_toml(path).get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{path}: expected one or more [[layers]] tables")
    spec = []
    for index, entry in enumerate(layers):
        if not isinstance(entry, dict):
            raise ValueError(
                f"{path}: layers[{index}] must be a table ([[layers]] with type = ...), "
                f"got {entry!r:.60}"
            )
        config = dict(entry)
        spec.append({"type": config.pop("type", None), "config": config})
    try:
        arguments = io.check_architecture(spec)
        for name, shape in io.declared_tensors(spec, arguments).items():
            if math.prod(shape) > MAX_LAYER_PARAMETERS:
                raise ValueError(f"weights {name} of shape {shape} exceed {MAX_LAYER_PARAMETERS:,}")
        return io.build(spec, dtype=dtype, rng=rng)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
