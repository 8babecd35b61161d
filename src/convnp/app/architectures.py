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
                conv = Conv2d(
                    tracker.shape[0],
                    maps,
                    kernel,
                    stride or 1,
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
                if kind == "s":
                    tracker.add(AvgPool2d(size))
                elif kind == "b":
                    tracker.add(Subsample2d(tracker.shape[0], size, dtype=dtype))
                else:
                    tracker.add(MaxPool2d(size, int(stride) if stride else None))
            elif match := _DENSE.fullmatch(token):
                if len(tracker.shape) != 1:
                    tracker.add(Flatten())
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
        tracker.add(Linear(tracker.shape[0], num_classes, dtype=dtype, rng=rng))
    add_classic_sigmoid()
    return Sequential(*tracker.layers)


def from_toml(
    path: str | Path, *, dtype: Any = np.float32, rng: np.random.Generator | None = None
) -> Sequential:
    """Build a Sequential from a TOML file with one ``[[layers]]`` table per layer."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{path}: cannot read TOML ({error})") from None
    layers = document.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{path}: expected one or more [[layers]] tables")
    spec = []
    for entry in layers:
        config = dict(entry)
        spec.append({"type": config.pop("type", None), "config": config})
    try:
        return io.build(spec, dtype=dtype, rng=rng)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
