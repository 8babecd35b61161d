"""Model files: weights in safetensors format, the architecture as JSON in its metadata.

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
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from convnp import layers as L
from convnp.losses import LOSSES
from convnp.model import Sequential

FORMAT_NAME = "convnp"
FORMAT_VERSION = 1

# The explicit table of what a model file may contain: only these classes can be built.
LAYER_TYPES: dict[str, type[L.Layer]] = {
    name: getattr(L, name) for name in L.__all__ if name != "Layer"
}


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

    Parameters are freshly initialised (from ``rng``); ``load`` then overwrites them.
    """
    rng = np.random.default_rng() if rng is None else rng
    if not isinstance(spec, list):
        raise ValueError(f"architecture must be a list of layers, got {type(spec).__name__}")
    layers = []
    for index, entry in enumerate(spec):
        if not isinstance(entry, dict) or not isinstance(entry.get("config", {}), dict):
            raise ValueError(
                f"architecture entry {index} is not {{'type': ..., 'config': {{...}}}}"
            )
        name = entry.get("type")
        cls = LAYER_TYPES.get(name)
        if cls is None:
            raise ValueError(
                f"architecture entry {index}: unknown layer type {name!r}; "
                f"known: {', '.join(sorted(LAYER_TYPES))}"
            )
        config = dict(entry.get("config", {}))
        keywords = _constructor_keywords(cls)
        if "dtype" in keywords:
            config["dtype"] = dtype
        if "rng" in keywords:  # a child generator each: layers never share one stream
            config["rng"] = rng.spawn(1)[0]
        try:
            layers.append(cls(**config))
        except (TypeError, ValueError) as error:
            raise ValueError(f"architecture entry {index} ({name}): {error}") from None
    return Sequential(*layers)


def _constructor_keywords(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def load_tensors(
    path: str | os.PathLike[str], *, metadata_only: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file; corrupt or truncated files raise ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as stream:
            metadata = stream.metadata() or {}
            names = [] if metadata_only else list(stream.keys())  # noqa: SIM118
            tensors = {name: stream.get_tensor(name) for name in names}
    except Exception as error:  # safetensors raises its own error types for bad headers/data
        raise ValueError(f"{path}: not a valid safetensors file ({error})") from None
    return tensors, metadata


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


def _parse_metadata(path: Path, metadata: dict[str, str]) -> tuple[list[Any], dict[str, Any], str]:
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a convnp model file (no 'format: convnp' metadata)")
    version = metadata.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise ValueError(
            f"{path}: model file format version {version}; this convnp reads {FORMAT_VERSION}"
        )
    try:
        spec = json.loads(metadata["architecture"])
        info = json.loads(metadata.get("info", "{}"))
        dtype = str(np.dtype(metadata.get("dtype", "float32")))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: corrupt model metadata ({error})") from None
    return spec, info, dtype


def load(path: str | os.PathLike[str]) -> Sequential:
    """Load a model saved by ``save``; shapes and names are checked against the architecture."""
    path = Path(path)
    tensors, metadata = load_tensors(path)
    spec, info, dtype = _parse_metadata(path, metadata)
    try:
        model = build(spec, dtype=dtype)
        model.load_state_dict(tensors)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if info.get("input_shape"):  # recorded by `convnp train` and Sequential.save
        model.input_shape = tuple(int(size) for size in info["input_shape"])
    if info.get("loss") in LOSSES:  # so predict_proba/evaluate use the loss it trained with
        model.compile(loss=info["loss"])
    return model


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``info`` dict stored with a model (input shape, class names, normalisation ...)."""
    path = Path(path)
    _, metadata = load_tensors(path, metadata_only=True)
    return _parse_metadata(path, metadata)[1]
