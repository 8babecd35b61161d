"""Model files and checkpoints: weights in safetensors format, the architecture as JSON.

A convnp model file is a standard ``.safetensors`` file (readable by any safetensors
library) whose tensors are ``Sequential.state_dict()`` (dotted names, e.g. ``"0.weight"``)
and whose text metadata holds:

* ``format`` = "convnp", ``format_version``, ``convnp_version``;
* ``architecture``: JSON list ``[{"type": "Conv2d", "config": {...}}, ...]``;
* ``info``: JSON dict of anything else worth keeping (input shape, class names,
  input normalisation, the loss the model was trained with ...).

Loading parses JSON and raw tensor bytes only: there is no pickle anywhere, so an untrusted
file cannot run code. Layers are rebuilt through the explicit ``LAYER_TYPES`` table.
Files are written atomically (temporary file, then ``os.replace``), so a crash mid-write
never leaves a half-written file under the final name.

A checkpoint (``save_checkpoint``) is the same kind of file with format
"convnp-checkpoint": the model's tensors under ``model/``, the optimizer's state under
``optimizer/``, and in its metadata the architecture, the optimizer's type and config, the
history so far, the layers' RNG states and the run's ``info``; ``resume`` rebuilds all of
it so ``convnp.train.fit`` continues bit for bit.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import math
import os
import secrets
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from convnp import layers as L
from convnp.layers.base import first_non_finite
from convnp.losses import LOSSES
from convnp.model import Sequential
from convnp.optim import Optimizer, optimizer_class

FORMAT_NAME = "convnp"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "convnp-checkpoint"
CHECKPOINT_NAME = "checkpoint.safetensors"  # in a run folder
MODEL_NAME = "model.safetensors"  # in a run folder

# The explicit table of what a model file may contain: only these classes can be built.
LAYER_TYPES: dict[str, type[L.Layer]] = {
    name: getattr(L, name) for name in L.__all__ if name != "Layer"
}
# Arguments added to a layer after files were written without them: the value that gives
# those files' layers their old behaviour (GELU was the tanh form before "approximate").
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {"GELU": {"approximate": "tanh"}}


class ModelFileError(ValueError):
    """A model file or checkpoint that convnp refuses: corrupt, inconsistent or hostile.

    The message starts with the file's path and names the field (``architecture entry 3
    (Linear): in_features ...``, ``info.input_shape ...``, tensor ``'0.weight'`` ...).
    """

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


# Limits on what untrusted metadata may declare (far above any real network).
MAX_LAYERS = 10_000
MAX_CONFIG_INT = 2**31 - 1  # sizes, strides, indices: anything larger is not a real layer
MAX_INPUT_ELEMENTS = 2**26  # one input image (info.input_shape): 64 Mi values
MAX_NAME_LENGTH = 1_000
MAX_ADAPTIVE_CELLS = 2**16  # adaptive pooling: a 256x256 output map
MAX_PADDING = MAX_DILATION = 1024  # far above real networks (DeepLab's atrous rates: 24)
MAX_TRANSPOSED_STRIDE = 1024  # a transposed convolution multiplies its maps' size by it
FLOAT_DTYPES = ("float32", "float64")


def architecture(model: Sequential) -> list[dict[str, Any]]:
    """The JSON-able description that ``build`` turns back into an equal model."""
    return [{"type": type(layer).__name__, "config": layer.config()} for layer in model]


def build(
    spec: list[dict[str, Any]],
    *,
    dtype: Any = np.float32,
    rng: np.random.Generator | None = None,
) -> Sequential:
    """Rebuild a Sequential from ``architecture()`` output; errors name the bad entry.

    The description is checked first (``check_architecture``): unknown layer types, unknown
    or missing arguments and values of the wrong type (a string for an int, ``Infinity``, an
    int beyond 2³¹, ``true`` for a size, nested lists) are ValueErrors naming the entry and
    the field. Parameters are freshly initialised (from ``rng``); ``load`` then overwrites them.
    """
    rng = np.random.default_rng() if rng is None else rng
    arguments = check_architecture(spec)
    layers = []
    for index, (entry, config) in enumerate(zip(spec, arguments)):
        cls = LAYER_TYPES[entry["type"]]
        config = {**LEGACY_DEFAULTS.get(entry["type"], {}), **config}
        keywords = _constructor_keywords(cls)
        if "dtype" in keywords:
            config["dtype"] = dtype
        if "rng" in keywords:  # a child generator each: layers never share one stream
            config["rng"] = rng.spawn(1)[0]
        try:
            layers.append(cls(**config))
        except (TypeError, ValueError) as error:
            raise ValueError(f"architecture entry {index} ({entry['type']}): {error}") from None
    return Sequential(*layers)


def _constructor_keywords(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


# -- checking untrusted descriptions ------------------------------------------------------
# Constructor arguments that a description never sets: the caller supplies them.
_SUPPLIED = {"self", "dtype", "rng", "parameters"}


def _signature(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor's parameters with evaluated annotations, minus the supplied ones."""
    parameters = inspect.signature(cls.__init__, eval_str=True).parameters
    return {name: p for name, p in parameters.items() if name not in _SUPPLIED}


def check_arguments(cls: type, config: Any, where: str) -> dict[str, Any]:
    """Check a JSON ``config`` against ``cls``'s constructor; returns it with defaults added.

    Every key must be a constructor argument, every argument without a default present,
    and every value must match the argument's annotation (``int``: an int, not a bool, of
    magnitude at most ``MAX_CONFIG_INT``; ``float``: a finite number; ``Sequence[...]``: a
    list of such; ...). Errors are ValueErrors starting with ``where``.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config must be a JSON object, got {_describe(config)}")
    signature = _signature(cls)
    unknown = sorted(str(key) for key in config if key not in signature)
    if unknown:
        raise ValueError(
            f"{where}: unknown argument {unknown[0]!r}; {cls.__name__} takes "
            f"{', '.join(signature) or 'no arguments'}"
        )
    arguments = {}
    for name, parameter in signature.items():
        if name not in config:
            if parameter.default is inspect.Parameter.empty:
                raise ValueError(f"{where}: missing argument {name!r}")
            continue
        value = config[name]
        if not _conforms(value, parameter.annotation):
            expected = inspect.formatannotation(parameter.annotation).replace(
                "collections.abc.", ""
            )
            raise ValueError(
                f"{where}: {name} must be {expected}, got {_describe(value)}"
                + (f" (at most {MAX_CONFIG_INT} in size)" if _is_big_int(value) else "")
            )
        arguments[name] = value
    return arguments


def check_architecture(spec: Any) -> list[dict[str, Any]]:
    """Check an untrusted architecture description; returns each entry's arguments.

    Nothing is allocated: this is what ``build`` and ``load`` run before building layers.
    """
    if not isinstance(spec, list):
        raise ValueError(f"architecture must be a list of layers, got {_describe(spec)}")
    if len(spec) > MAX_LAYERS:
        raise ValueError(f"architecture has {len(spec)} layers (at most {MAX_LAYERS})")
    arguments = []
    for index, entry in enumerate(spec):
        if not isinstance(entry, dict) or set(entry) - {"type", "config"}:
            raise ValueError(
                f"architecture entry {index} is not {{'type': ..., 'config': {{...}}}}, "
                f"got {_describe(entry)}"
            )
        name = entry.get("type")
        if not isinstance(name, str) or name not in LAYER_TYPES:
            raise ValueError(
                f"architecture entry {index}: unknown layer type {_describe(name)}; "
                f"known: {', '.join(sorted(LAYER_TYPES))}"
            )
        where = f"architecture entry {index} ({name})"
        arguments.append(check_arguments(LAYER_TYPES[name], entry.get("config", {}), where))
        _check_window_sizes(arguments[-1], where)
        if name.startswith("ConvTranspose"):
            _check_transposed_stride(arguments[-1], where)
    return arguments


def _per_axis(value: Any, axes: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * axes


def _check_window_sizes(config: dict[str, Any], where: str) -> None:
    """Sizes no tensor in the file bounds but a forward pass allocates: zero padding, output
    padding and dilation (a padding of 2^20 asks for terabytes of padded maps) beyond
    ``MAX_PADDING``/``MAX_DILATION``, and adaptive pooling outputs beyond
    ``MAX_ADAPTIVE_CELLS`` per map."""
    limits = ("padding", MAX_PADDING), ("output_padding", MAX_PADDING), ("dilation", MAX_DILATION)
    for name, limit in limits:
        value = config.get(name, 0)
        if not isinstance(value, str) and max(_per_axis(value, 1), default=0) > limit:
            raise ValueError(f"{where}: {name} {value} exceeds {limit}")
    output = config.get("output_size")
    if output is not None:
        cells = math.prod(size for size in _per_axis(output, 1) if size is not None)
        if cells > MAX_ADAPTIVE_CELLS:
            raise ValueError(
                f"{where}: output_size {output} makes {cells:,} cells a map "
                f"(at most {MAX_ADAPTIVE_CELLS:,})"
            )


def _check_transposed_stride(config: dict[str, Any], where: str) -> None:
    """A transposed convolution's stride multiplies its output's size: at most
    ``MAX_TRANSPOSED_STRIDE`` (a convolution's stride divides it and needs no bound)."""
    stride = config.get("stride", 1)
    if max(_per_axis(stride, 1), default=0) > MAX_TRANSPOSED_STRIDE:
        raise ValueError(f"{where}: stride {stride} exceeds {MAX_TRANSPOSED_STRIDE}")


def _conforms(value: Any, annotation: Any) -> bool:
    """Does a JSON value (or its NumPy/tuple equivalent) match a constructor annotation?"""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, option) for option in args)
    if annotation is bool:
        return isinstance(value, (bool, np.bool_)) or (_is_int(value) and value in (0, 1))
    if annotation is int:
        return _is_int(value) and abs(int(value)) <= MAX_CONFIG_INT
    if annotation is float:
        return (_is_int(value) and abs(int(value)) <= MAX_CONFIG_INT) or (
            isinstance(value, (float, np.floating)) and bool(np.isfinite(value))
        )
    if annotation is str:
        return isinstance(value, str) and len(value) <= MAX_NAME_LENGTH
    if annotation is np.ndarray:
        return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
    if origin is tuple:
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(args)
            and all(_conforms(item, kind) for item, kind in zip(value, args))
        )
    if origin is collections.abc.Sequence:
        return isinstance(value, (list, tuple)) and all(_conforms(item, args[0]) for item in value)
    if origin is collections.abc.Mapping:
        return isinstance(value, dict) and all(
            _conforms(key, args[0]) and _conforms(item, args[1]) for key, item in value.items()
        )
    raise TypeError(f"io: no rule for annotation {annotation!r}")  # a new layer's annotation


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_big_int(value: Any) -> bool:
    return _is_int(value) and abs(int(value)) > MAX_CONFIG_INT


def _describe(value: Any) -> str:
    """A short, safe rendering of an untrusted value for an error message."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _parse_json(text: Any, field: str) -> Any:
    """json.loads for untrusted text: deep nesting and huge numbers are ValueErrors."""
    if not isinstance(text, str):
        raise ValueError(f"'{field}' is missing")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"'{field}' is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or an int of more than 4300 digits
        raise ValueError(f"corrupt model metadata: '{field}' is not valid JSON ({error})") from None


# -- the tensors an architecture declares --------------------------------------------------
def _expand(value: Any, nd: int) -> tuple[int, ...]:
    return (int(value),) * nd if _is_int(value) else tuple(int(v) for v in value)


def _window_count(size: int, kernel: int, stride: int, padding: Any, index: int) -> int:
    """Output positions along one axis: PyTorch's Shape formula, with the layers' padding
    modes ("valid": none, "same": kernel - 1 in all, "full": kernel - 1 on each side; an
    unknown mode counts as none here and fails in the constructor)."""
    if isinstance(padding, str):
        total = {"same": kernel - 1, "full": 2 * (kernel - 1)}.get(padding, 0)
    else:
        total = 2 * _expand(padding, 2)[index]
    return (size + total - kernel) // max(stride, 1) + 1


def _conv_tensors(config: dict[str, Any], nd: int) -> dict[str, tuple[int, ...]]:
    groups, in_channels = config.get("groups", 1), config["in_channels"]
    if groups < 1 or in_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels}")
    kernel = _expand(config["kernel_size"], nd)
    shapes = {"weight": (config["out_channels"], in_channels // groups, *kernel)}
    if config.get("bias", True):
        shapes["bias"] = (config["out_channels"],)
    return shapes


def _conv_transpose_tensors(config: dict[str, Any], nd: int) -> dict[str, tuple[int, ...]]:
    """PyTorch's layout: (in_channels, out_channels/groups, *kernel_size)."""
    groups = config.get("groups", 1)
    if groups < 1 or config["out_channels"] % groups:
        raise ValueError(f"groups={groups} does not divide out_channels")
    kernel = _expand(config["kernel_size"], nd)
    shapes = {"weight": (config["in_channels"], config["out_channels"] // groups, *kernel)}
    if config.get("bias", True):
        shapes["bias"] = (config["out_channels"],)
    return shapes


def _linear_tensors(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    shapes = {"weight": (config["out_features"], config["in_features"])}
    if config.get("bias", True):
        shapes["bias"] = (config["out_features"],)
    return shapes


def _local_tensors(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    size, kernel = _expand(config["input_size"], 2), _expand(config["kernel_size"], 2)
    stride, padding = _expand(config.get("stride", 1), 2), config.get("padding", 0)
    out = tuple(_window_count(size[i], kernel[i], stride[i], padding, i) for i in range(2))
    channels = (config["out_channels"], config["in_channels"])
    shapes = {"weight": (*out, *channels, *kernel)}
    if config.get("bias", True):
        shapes["bias"] = (config["out_channels"], *out)
    return shapes


def _combination_tensors(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    out_c, in_c = config["out_channels"], config["in_channels"]
    rows = (out_c, in_c) if config.get("kernels", "per_pair") == "per_pair" else (in_c, 1)
    shapes = {"weight": (*rows, *_expand(config["kernel_size"], 2)), "alpha_logits": (out_c, in_c)}
    if config.get("bias", True):
        shapes["bias"] = (out_c,)
    return shapes


def _batch_norm_tensors(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    features = (config["num_features"],)
    names = []
    if config.get("affine", True):
        names += ["weight", "bias"] if config.get("bias", True) else ["weight"]
    if config.get("track_running_stats", True):
        names += ["running_mean", "running_var"]
    tensors = dict.fromkeys(names, features)
    # the cumulative average (momentum None) counts its batches
    if config.get("track_running_stats", True) and config.get("momentum", 0.1) is None:
        tensors["num_batches_tracked"] = ()
    return tensors


# The params and buffers each layer type allocates, from its config alone (every other type
# holds none). ``load`` compares these with the file's header before building anything;
# tests/test_io.py checks the table against the layers themselves.
DECLARED_TENSORS: dict[str, Callable[[dict[str, Any]], dict[str, tuple[int, ...]]]] = {
    "Linear": _linear_tensors,
    "Conv1d": lambda config: _conv_tensors(config, 1),
    "Conv2d": lambda config: _conv_tensors(config, 2),
    "Conv3d": lambda config: _conv_tensors(config, 3),
    "ConvTranspose1d": lambda config: _conv_transpose_tensors(config, 1),
    "ConvTranspose2d": lambda config: _conv_transpose_tensors(config, 2),
    "ConvTranspose3d": lambda config: _conv_transpose_tensors(config, 3),
    "LocallyConnected2d": _local_tensors,
    "FeatureMapCombination": _combination_tensors,
    "EuclideanRBF": lambda config: {"weight": (config["out_features"], config["in_features"])},
    "Subsample2d": lambda config: {"beta": (config["channels"],), "bias": (config["channels"],)},
    "BatchNorm1d": _batch_norm_tensors,
    "BatchNorm2d": _batch_norm_tensors,
    "BatchNorm3d": _batch_norm_tensors,
}


def _diagonal_blocks(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped convolution's weight as older files store it, the full
    (O, C, *k) masked to zero off the diagonal blocks, in today's (O, C/groups, *k): the
    diagonal blocks only (the rest was masked out of the forward, so nothing is lost)."""
    out_channels, in_channels, *kernel = weight.shape
    blocks = weight.reshape(groups, out_channels // groups, groups, in_channels // groups, *kernel)
    return blocks[np.arange(groups), :, np.arange(groups)].reshape(out_channels, -1, *kernel)


# A legacy layout: the shape older files hold a tensor in, and its conversion to today's.
Legacy = tuple[tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _legacy_conv_tensors(config: dict[str, Any], nd: int) -> dict[str, Legacy]:
    """Files written before the (O, C/groups, *k) layout hold a grouped convolution's
    weight as the full masked (O, C, *k)."""
    groups = config.get("groups", 1)
    if groups == 1:
        return {}
    dense = (config["out_channels"], config["in_channels"], *_expand(config["kernel_size"], nd))
    return {"weight": (dense, lambda weight: _diagonal_blocks(weight, groups))}


# Tensors that files written by earlier versions hold in another layout; ``load`` and
# ``load_checkpoint`` accept that shape too (and only it) and convert on load.
LEGACY_TENSORS: dict[str, Callable[[dict[str, Any]], dict[str, Legacy]]] = {
    "Conv1d": lambda config: _legacy_conv_tensors(config, 1),
    "Conv2d": lambda config: _legacy_conv_tensors(config, 2),
    "Conv3d": lambda config: _legacy_conv_tensors(config, 3),
}


def _tensors_by_layer(
    table: dict[str, Callable[[dict[str, Any]], dict[str, Any]]],
    spec: list[dict[str, Any]],
    arguments: list[dict[str, Any]],
) -> dict[str, Any]:
    """{"<index>.<name>": what ``table``'s rule says} over the checked architecture."""
    found = {}
    for index, (entry, config) in enumerate(zip(spec, arguments)):
        rule = table.get(entry["type"])
        if rule is None:
            continue
        try:
            values = rule(config)
        except (TypeError, ValueError, IndexError) as error:  # a malformed size
            raise ValueError(
                f"architecture entry {index} ({entry['type']}): inconsistent sizes in {config} "
                f"({error})"
            ) from None
        found.update({f"{index}.{name}": value for name, value in values.items()})
    return found


def declared_tensors(
    spec: list[dict[str, Any]], arguments: list[dict[str, Any]]
) -> dict[str, tuple[int, ...]]:
    """{"<index>.<name>": shape} of every param and buffer the checked architecture declares."""
    return _tensors_by_layer(DECLARED_TENSORS, spec, arguments)


def legacy_tensors(
    spec: list[dict[str, Any]], arguments: list[dict[str, Any]]
) -> dict[str, Legacy]:
    """{"<index>.<name>": (older shape, conversion)} for the tensors that have a legacy layout."""
    return _tensors_by_layer(LEGACY_TENSORS, spec, arguments)


def check_tensor_shapes(
    path: Path,
    declared: dict[str, tuple[int, ...]],
    stored: dict[str, tuple[int, ...]],
    legacy: dict[str, Legacy] | None = None,
) -> None:
    """The tensors in the file must be exactly the ones the architecture declares, each in
    its declared shape or its ``legacy`` one."""
    legacy = legacy or {}
    missing = sorted(set(declared) - set(stored))
    unexpected = sorted(set(stored) - set(declared))
    if missing or unexpected:
        raise ModelFileError(
            path,
            f"the tensors do not match the architecture: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}",
        )
    for name, shape in declared.items():
        accepted = [tuple(shape)] + ([tuple(legacy[name][0])] if name in legacy else [])
        if tuple(stored[name]) not in accepted:
            older = f" or {accepted[1]} (older files)" if len(accepted) > 1 else ""
            raise ModelFileError(
                path,
                f"tensor '{name}' has shape {tuple(stored[name])}, model expects {tuple(shape)}"
                f"{older} (as its architecture declares)",
            )


def _convert_legacy(
    tensors: dict[str, np.ndarray],
    legacy: dict[str, Legacy],
    name_of: Callable[[str], str] = lambda key: key,
) -> dict[str, np.ndarray]:
    """``tensors`` with each one held in its legacy shape converted to today's layout;
    ``name_of(key)`` is the model tensor a key holds (or holds state of: an optimizer's
    "momentum.0.weight" is per-element state of "0.weight" and converts with it)."""
    converted = dict(tensors)
    for key, value in tensors.items():
        name = name_of(key)
        if name in legacy and value.shape == tuple(legacy[name][0]):
            converted[key] = legacy[name][1](value)
    return converted


# -- files ---------------------------------------------------------------------------------
def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file in the same folder and ``os.replace``.

    The temporary file ``.<name>.<random>.tmp`` is created as ``open()`` creates files, with
    mode 0o666 masked by the umask (``tempfile.mkstemp``'s 0o600 would carry over to the
    final file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            handle = os.open(temporary, flags, 0o666)
            break
        except FileExistsError:  # another writer drew the same name: draw again
            continue
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_tensors(
    path: str | os.PathLike[str], tensors: dict[str, np.ndarray], metadata: dict[str, str]
) -> None:
    """Atomically write a safetensors file (tensors made contiguous first)."""
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
    contiguous = {name: np.require(value, requirements="C") for name, value in tensors.items()}
    write_atomic(path, safetensors.numpy.save(contiguous, metadata=metadata))


def _read_safetensors(path: str | os.PathLike[str], read: Callable[[Any], Any]) -> Any:
    """``read(stream)`` on an open safetensors file; a corrupt file is a ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as stream:
            return read(stream)
    except Exception as error:  # safetensors raises its own error types for bad headers/data
        raise ModelFileError(path, f"not a valid safetensors file ({error})") from None


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The metadata and the shape of every tensor of a safetensors file, reading no tensor data."""
    return _read_safetensors(
        path,
        lambda stream: (
            stream.metadata() or {},
            {name: tuple(stream.get_slice(name).get_shape()) for name in stream.keys()},  # noqa: SIM118
        ),
    )


def load_tensors(
    path: str | os.PathLike[str], *, metadata_only: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file; corrupt or truncated files raise ValueError naming the file."""
    return _read_safetensors(
        path,
        lambda stream: (
            {} if metadata_only else {name: stream.get_tensor(name) for name in stream.keys()},  # noqa: SIM118
            stream.metadata() or {},
        ),
    )


def check_finite_tensors(
    path: Path, tensors: dict[str, np.ndarray], allow_non_finite: bool
) -> None:
    """Refuse NaN/inf weights unless the caller explicitly allows them."""
    name = None if allow_non_finite else first_non_finite(tensors)
    if name is not None:
        value = tensors[name]
        count = int(value.size - np.isfinite(value).sum())
        raise ModelFileError(
            path,
            f"tensor '{name}' contains NaN or inf ({count} of {value.size} values); "
            "pass allow_non_finite=True to load it anyway",
        )


def save(
    model: Sequential, path: str | os.PathLike[str], info: dict[str, Any] | None = None
) -> None:
    """Save weights and architecture (and optional JSON-able ``info``) to ``path``."""
    from convnp import __version__

    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "convnp_version": __version__,
        "dtype": str(model.dtype or np.dtype(np.float32)),
        "architecture": json.dumps(architecture(model)),
        "info": json.dumps(info or {}),
    }
    save_tensors(path, model.state_dict(), metadata)


def _parse_metadata(
    path: Path, metadata: dict[str, str], kind: str = FORMAT_NAME
) -> tuple[list[Any], list[dict[str, Any]], dict[str, Any], str]:
    """Architecture (checked), its arguments, the checked ``info`` and the dtype."""
    if metadata.get("format") != kind:
        what = "model file" if kind == FORMAT_NAME else "checkpoint"
        raise ModelFileError(path, f"not a convnp {what} (no 'format: {kind}' metadata)")
    version = metadata.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise ModelFileError(
            path, f"format version {version[:20]!r}; this convnp reads {FORMAT_VERSION}"
        )
    dtype = metadata.get("dtype", "float32")
    if dtype not in FLOAT_DTYPES:
        raise ModelFileError(path, f"'dtype' must be one of {FLOAT_DTYPES}, got {_describe(dtype)}")
    try:
        spec = _parse_json(metadata.get("architecture"), "architecture")
        arguments = check_architecture(spec)
        info = _parse_json(metadata.get("info", "{}"), "info")
        check_info(info)
    except ValueError as error:
        raise ModelFileError(path, str(error)) from None
    return spec, arguments, info, dtype


def _positive_ints(value: Any) -> bool:
    return (
        isinstance(value, list)
        and 1 <= len(value) <= 4
        and all(_is_int(v) and 1 <= v <= MAX_CONFIG_INT for v in value)
        and math.prod(value) <= MAX_INPUT_ELEMENTS
    )


def _finite_numbers(value: Any) -> bool:
    return isinstance(value, list) and all(
        (_is_int(v) or isinstance(v, float)) and math.isfinite(v) for v in value
    )


def _normalize_ok(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("kind", "unit"), str)
        and all(value.get(key) is None or _finite_numbers(value[key]) for key in ("mean", "std"))
    )


# What convnp reads back from ``info`` (evaluate, predict, resume): each field's test and
# rule. Other keys are the caller's own and are kept as they are.
INFO_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "input_shape": (_positive_ints, "must be a list of 1-4 positive ints (no batch axis)"),
    "class_names": (
        lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "must be a list of strings",
    ),
    "normalize": (_normalize_ok, "must be {kind: str, mean: [numbers]|null, std: ...}"),
    **dict.fromkeys(
        ("loss", "dataset", "model", "schedule"), (lambda v: isinstance(v, str), "must be a string")
    ),
    **dict.fromkeys(
        ("batch_size", "epochs"),
        (lambda v: _is_int(v) and 1 <= v <= MAX_CONFIG_INT, "must be a positive int"),
    ),
    "warmup": (lambda v: _is_int(v) and 0 <= v <= MAX_CONFIG_INT, "must be an int >= 0"),
    "seed": (lambda v: _is_int(v) and abs(v) < 2**64, "must be an int"),
    **dict.fromkeys(
        ("base_lr", "test_accuracy"), (lambda v: _finite_numbers([v]), "must be a finite number")
    ),
}


def check_info(info: Any) -> None:
    """``info`` must be a JSON object whose fields convnp reads back have their types."""
    if not isinstance(info, dict):
        raise ValueError(f"'info' must be a JSON object, got {_describe(info)}")
    for key, (valid, rule) in INFO_FIELDS.items():
        if info.get(key) is not None and not valid(info[key]):  # None: not recorded
            raise ValueError(f"info.{key} {rule}, got {_describe(info[key])}")


def _check_info_fits(path: Path, info: dict[str, Any], model: Sequential) -> None:
    """info.input_shape must run through the model, and class_names name every output."""
    if info.get("input_shape") is None:
        return
    try:
        output = model.output_shapes(tuple(info["input_shape"]))[-1]
    except ValueError as error:
        raise ModelFileError(
            path, f"info.input_shape {info['input_shape']} does not fit the model ({error})"
        ) from None
    names = info.get("class_names")
    if names is not None and len(output) == 1 and len(names) != output[0]:
        raise ModelFileError(
            path, f"info.class_names has {len(names)} names but the model has {output[0]} outputs"
        )


def _build_checked(
    path: Path,
    spec: list[Any],
    arguments: list[dict[str, Any]],
    dtype: str,
    tensors: dict[str, np.ndarray],
    allow_non_finite: bool,
) -> Sequential:
    """Build the (already checked) architecture and copy in the (shape-checked) tensors."""
    check_finite_tensors(path, tensors, allow_non_finite)
    try:
        model = build(spec, dtype=dtype)
        model.load_state_dict(tensors)
    except ValueError as error:
        raise ModelFileError(path, str(error)) from None
    return model


def load(path: str | os.PathLike[str], *, allow_non_finite: bool = False) -> Sequential:
    """Load a model saved by ``save``, checking everything before allocating anything.

    Order: the header (metadata and tensor shapes, no data) is read; the architecture and
    ``info`` are checked (``check_architecture``, ``check_info``); the tensors it declares
    must be exactly those in the file, shape for shape; only then are tensors read and
    layers built. Weights containing NaN or inf are refused unless ``allow_non_finite=True``
    (for inspecting a diverged model). Every problem is a ``ModelFileError`` (a ValueError)
    naming the file and the field.
    """
    path = Path(path)
    metadata, shapes = read_header(path)
    spec, arguments, info, dtype = _parse_metadata(path, metadata)
    try:
        declared = declared_tensors(spec, arguments)
        legacy = legacy_tensors(spec, arguments)
    except ValueError as error:
        raise ModelFileError(path, str(error)) from None
    check_tensor_shapes(path, declared, shapes, legacy)
    tensors = _convert_legacy(load_tensors(path)[0], legacy)
    model = _build_checked(path, spec, arguments, dtype, tensors, allow_non_finite)
    _check_info_fits(path, info, model)
    if info.get("input_shape"):  # recorded by `convnp train` and Sequential.save
        model.input_shape = tuple(int(size) for size in info["input_shape"])
    if info.get("loss") in LOSSES:  # so predict_proba/evaluate use the loss it trained with
        model.compile(loss=info["loss"])
    return model


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``info`` dict stored with a model (input shape, class names, normalisation ...)."""
    path = Path(path)
    metadata, _ = read_header(path)
    return _parse_metadata(path, metadata)[2]


# -- checkpoints ------------------------------------------------------------------------
def _rng_states(model: Sequential) -> dict[str, Any]:
    """Bit-generator states of layers that draw random numbers while training (dropout)."""
    return {
        str(index): layer.rng.bit_generator.state
        for index, layer in enumerate(model)
        if isinstance(getattr(layer, "rng", None), np.random.Generator)
    }


def save_checkpoint(
    path: str | Path,
    model: Sequential,
    optimizer: Optimizer,
    history: list[dict[str, Any]],
    info: dict[str, Any] | None = None,
) -> None:
    """Model, optimizer state, history and layer RNG states in one safetensors file."""
    tensors = {f"model/{key}": value for key, value in model.state_dict().items()}
    tensors.update({f"optimizer/{key}": value for key, value in optimizer.state_dict().items()})
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "dtype": str(model.dtype),
        "architecture": json.dumps(architecture(model)),
        "optimizer": json.dumps({"type": type(optimizer).__name__, "config": optimizer.config()}),
        "history": json.dumps(history),
        "rng_states": json.dumps(_rng_states(model)),
        "info": json.dumps(info or {}),
    }
    save_tensors(path, tensors, metadata)


def load_checkpoint(path: str | Path, *, allow_non_finite: bool = False) -> dict[str, Any]:
    """Parse a checkpoint: model (rebuilt), optimizer spec and state, history, info.

    Checked like ``load`` before anything is allocated, and then: the optimizer's type and
    config against its constructor, the history (a list of JSON objects), and an RNG state
    for exactly the layers that draw random numbers. NaN or inf in the weights or the
    optimizer's state is refused unless ``allow_non_finite=True``. Errors are
    ``ModelFileError`` naming the file and the field.
    """
    path = _checkpoint_path(path)
    metadata, shapes = read_header(path)
    spec, arguments, info, dtype = _parse_metadata(path, metadata, CHECKPOINT_FORMAT)
    stray = sorted(name for name in shapes if not name.startswith(("model/", "optimizer/")))
    try:
        if stray:
            raise ValueError(f"unexpected tensors {stray[:5]} (neither model/ nor optimizer/)")
        declared = declared_tensors(spec, arguments)
        legacy = legacy_tensors(spec, arguments)
        optimizer = _check_optimizer(_parse_json(metadata.get("optimizer"), "optimizer"))
        history = _check_history(_parse_json(metadata.get("history"), "history"))
        rng_states = _parse_json(metadata.get("rng_states"), "rng_states")
    except ValueError as error:
        raise ModelFileError(path, str(error)) from None
    check_tensor_shapes(path, declared, _with_prefix(shapes, "model/"), legacy)
    tensors, _ = load_tensors(path)
    model_tensors = _convert_legacy(_with_prefix(tensors, "model/"), legacy)
    model = _build_checked(path, spec, arguments, dtype, model_tensors, allow_non_finite)
    _restore_rng_states(path, model, rng_states)
    check_finite_tensors(path, {k: v for k, v in tensors.items() if k.startswith("optimizer/")},
                 allow_non_finite)  # fmt: skip
    _check_info_fits(path, info, model)
    return {
        "model": model,
        "optimizer": optimizer,
        "optimizer_state": _convert_legacy(
            _with_prefix(tensors, "optimizer/"), legacy, lambda key: key.partition(".")[2]
        ),
        "history": history,
        "info": info,
    }


def _checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or the one in a run folder."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def _check_optimizer(spec: Any) -> dict[str, Any]:
    """{"type": a registered optimizer, "config": its constructor's arguments}."""
    if not isinstance(spec, dict) or set(spec) != {"type", "config"}:
        raise ValueError(
            f"'optimizer' must be {{'type': ..., 'config': {{...}}}}, got {_describe(spec)}"
        )
    cls = optimizer_class(spec["type"])
    return {"type": spec["type"], "config": check_arguments(cls, spec["config"], "optimizer")}


def _check_history(history: Any) -> list[dict[str, Any]]:
    """A list of per-epoch JSON objects whose values are numbers, strings or null."""
    scalar = (int, float, str, type(None))
    if not isinstance(history, list) or not all(
        isinstance(record, dict) and all(isinstance(v, scalar) for v in record.values())
        for record in history
    ):
        raise ValueError(f"'history' must be a list of flat JSON objects, got {_describe(history)}")
    return history


def _restore_rng_states(path: Path, model: Sequential, states: Any) -> None:
    """Set the saved bit-generator state of every layer that draws random numbers."""
    expected = set(_rng_states(model))
    if not isinstance(states, dict) or set(states) != expected:
        found = sorted(states) if isinstance(states, dict) else _describe(states)
        raise ModelFileError(
            path, f"'rng_states' must hold a state for layers {sorted(expected)}, got {found}"
        )
    for index, state in states.items():
        generator = model[int(index)].rng.bit_generator
        try:
            generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as error:
            raise ModelFileError(
                path, f"rng_states[{index!r}] is not a {type(generator).__name__} state ({error})"
            ) from None


def resume(
    path: str | Path, *, allow_non_finite: bool = False
) -> tuple[Sequential, Optimizer, list[dict[str, Any]], dict[str, Any]]:
    """Model, optimizer (with its state), history and info from a checkpoint, ready for
    ``fit(..., history=history)`` to continue exactly where the run stopped.

    ``allow_non_finite`` as in ``load_checkpoint``.
    """
    checkpoint = load_checkpoint(path, allow_non_finite=allow_non_finite)
    model = checkpoint["model"]
    spec = checkpoint["optimizer"]
    try:
        optimizer = optimizer_class(spec["type"])(model.parameters(), **spec["config"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
    except ValueError as error:
        raise ModelFileError(_checkpoint_path(path), f"optimizer: {error}") from None
    return model, optimizer, checkpoint["history"], checkpoint["info"]


def _with_prefix(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
