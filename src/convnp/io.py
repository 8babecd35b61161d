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

import inspect
import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from convnp import layers as L
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
    spec, _, dtype = _parse_metadata(path, metadata)
    try:
        model = build(spec, dtype=dtype)
        model.load_state_dict(tensors)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return model


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``info`` dict stored with a model (input shape, class names, normalisation ...)."""
    path = Path(path)
    _, metadata = load_tensors(path, metadata_only=True)
    return _parse_metadata(path, metadata)[1]


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Parse a checkpoint: model (rebuilt), optimizer spec and state, history, info."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a convnp checkpoint")
    try:
        model = build(json.loads(metadata["architecture"]), dtype=metadata["dtype"])
        model.load_state_dict(_with_prefix(tensors, "model/"))
        for index, state in json.loads(metadata["rng_states"]).items():
            model[int(index)].rng.bit_generator.state = state
        return {
            "model": model,
            "optimizer": json.loads(metadata["optimizer"]),
            "optimizer_state": _with_prefix(tensors, "optimizer/"),
            "history": json.loads(metadata["history"]),
            "info": json.loads(metadata["info"]),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: corrupt checkpoint ({error})") from None


def resume(path: str | Path) -> tuple[Sequential, Optimizer, list[dict[str, Any]], dict[str, Any]]:
    """Model, optimizer (with its state), history and info from a checkpoint, ready for
    ``fit(..., history=history)`` to continue exactly where the run stopped."""
    checkpoint = load_checkpoint(path)
    model = checkpoint["model"]
    spec = checkpoint["optimizer"]
    try:
        optimizer_type = optimizer_class(spec.get("type"))
    except ValueError as error:
        raise ValueError(f"{path}: checkpoint optimizer: {error}") from None
    optimizer = optimizer_type(model.parameters(), **spec["config"])
    optimizer.load_state_dict(checkpoint["optimizer_state"])
    return model, optimizer, checkpoint["history"], checkpoint["info"]


def _with_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
