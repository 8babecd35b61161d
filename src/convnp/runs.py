"""Run folders and the record of a run (``RunInfo``).

A training run lives in one folder, ``runs/<model>-<YYYYmmdd-HHMMSS>`` unless the user
names one, holding ``checkpoint.safetensors`` (after every epoch), ``history.json``/``.csv``
and, once training ends, ``model.safetensors``. ``runs/latest`` is a symbolic link to the
newest run. Nothing here ever writes into a folder that holds another run.

``RunInfo`` is what a run records about itself (command, model, data and its split,
normalisation, schedule, seed, versions...). It travels as a JSON object in the ``info``
metadata of checkpoints and model files, with a ``schema_version``; files written before
the version existed (a plain dict without one) load as ``schema_version=0``.

``load_model`` is the one resolver behind every command that reads a trained model: it
accepts a model file, a checkpoint or a run folder alike.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convnp import io
from convnp.model import Sequential

#: Version of the ``RunInfo`` layout written by this convnp. 0 marks files from before the
#: version existed: their per-epoch "val" metrics were computed on the test set.
SCHEMA_VERSION = 1
HISTORY_NAMES = ("history.json", "history.csv")
#: Files that make a folder a run folder; ``check_out_dir`` refuses to write over them.
RUN_FILES = (io.MODEL_NAME, io.CHECKPOINT_NAME, *HISTORY_NAMES)
LATEST = "latest"


class RunFolderError(ValueError):
    """An output folder that cannot be used (a file, or a folder holding another run)."""


# -- the record of a run ------------------------------------------------------------------
@dataclass
class RunInfo:
    """What a training run records; saved as JSON in its checkpoints and model file.

    Attributes:
        model: built-in model (recipe) name, or "custom" for ``--arch``/``--config``.
        architecture: the architecture string or TOML path of a custom model.
        dataset: data set name (``convnp.data.DATASETS``); data_source: the copy used.
        input_shape: one input without the batch axis, e.g. (1, 28, 28).
        class_names: the name of output k at index k.
        loss: "cross_entropy", "squared_error" or "rbf" (``convnp.app.zoo.LOSSES``).
        normalize: {"kind": "unit" | "standardize" | None, "mean": [...], "std": [...]},
            the input normalisation, with statistics of the training split.
        batch_size, epochs, seed, schedule, warmup, base_lr, augment: the training set-up
            (``epochs`` is the planned total; it grows when a run is extended).
        train_size, val_size, test_size: images in each split (validation is held out of
            the data set's training images; ``convnp.data.train_val_split``).
        test_accuracy, test_loss: the test set, evaluated once after training.
        sync_batch_norm: on MPI ranks, batch norm's statistics span the global batch
            (``convnp.runtime.distributed.sync_batch_norm``) instead of each rank's slice.
        command: the command line that started the run; versions: convnp, NumPy, Python.
        extra: keys this convnp does not know (kept, so a round trip loses nothing).
    """

    model: str = "custom"
    architecture: str | None = None
    dataset: str | None = None
    data_source: str | None = None
    input_shape: list[int] | None = None
    class_names: list[str] | None = None
    loss: str = "cross_entropy"
    normalize: dict[str, Any] = field(default_factory=lambda: {"kind": "unit"})
    batch_size: int | None = None
    epochs: int | None = None
    seed: int | None = None
    schedule: str = "constant"
    warmup: int = 0
    base_lr: float | None = None
    augment: list[Any] | None = None
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    sync_batch_norm: bool = False
    command: list[str] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``extra``'s keys at the top level, as they were read); fields
        not known (None) are left out, as older convnp versions wrote them."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        known = {key: value for key, value in data.items() if value is not None}
        return {**known.pop("extra"), **known}

    @classmethod
    def from_dict(cls, data: Any) -> RunInfo:
        """Parse a stored ``info``; ValueError names the field that has the wrong type."""
        if not isinstance(data, dict):
            raise ValueError(f"info must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        data.setdefault("schema_version", 0)  # written before the schema was versioned
        version = data["schema_version"]
        if not _is_int(version) or not 0 <= version <= SCHEMA_VERSION:
            raise ValueError(
                f"info.schema_version is {version!r}; this convnp reads 0..{SCHEMA_VERSION} "
                "(a newer convnp wrote this file?)"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        for key, value in values.items():
            check = _FIELD_CHECKS.get(key)
            if value is not None and check is not None and not check[0](value):
                raise ValueError(f"info.{key} must be {check[1]}, got {value!r:.80}")
        _check_normalize(values.get("normalize", {"kind": "unit"}))
        extra = {key: value for key, value in data.items() if key not in known}
        return cls(**values, extra=extra)

    @property
    def val_was_test(self) -> bool:
        """True for runs from before the validation split: their "val" curve is the test set."""
        return self.schema_version == 0


def current_versions() -> dict[str, str]:
    from convnp import __version__

    return {"convnp": __version__, "numpy": np.__version__, "python": platform.python_version()}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _list_of(check: Any) -> Any:
    return lambda value: isinstance(value, list) and all(check(item) for item in value)


_STRINGS = (lambda value: isinstance(value, str), "a string")
_COUNT = (lambda value: _is_int(value) and value >= 0, "an integer >= 0")
_NUMBER = (_is_number, "a finite number")
_FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "model": _STRINGS,
    "architecture": _STRINGS,
    "dataset": _STRINGS,
    "data_source": _STRINGS,
    "loss": _STRINGS,
    "schedule": _STRINGS,
    "input_shape": (_list_of(lambda v: _is_int(v) and v > 0), "a list of positive integers"),
    "class_names": (_list_of(lambda v: isinstance(v, str)), "a list of strings"),
    "normalize": (lambda value: isinstance(value, dict), 'an object {"kind": ...}'),
    "batch_size": _COUNT,
    "epochs": _COUNT,
    "seed": _COUNT,
    "warmup": _COUNT,
    "base_lr": _NUMBER,
    "augment": (lambda value: isinstance(value, list), "a list of transforms"),
    "train_size": _COUNT,
    "val_size": _COUNT,
    "test_size": _COUNT,
    "test_accuracy": _NUMBER,
    "test_loss": _NUMBER,
    "sync_batch_norm": (lambda value: isinstance(value, bool), "true or false"),
    "command": (_list_of(lambda v: isinstance(v, str)), "a list of strings"),
    "versions": (lambda value: isinstance(value, dict), "an object"),
}


def _check_normalize(normalize: dict[str, Any]) -> None:
    if normalize.get("kind", "unit") not in ("unit", "standardize", None):
        raise ValueError(
            f"info.normalize.kind must be 'unit', 'standardize' or null, "
            f"got {normalize.get('kind')!r:.80}"
        )
    for key in ("mean", "std"):
        value = normalize.get(key)
        if value is not None and not _list_of(_is_number)(value):
            raise ValueError(f"info.normalize.{key} must be a list of finite numbers")


# -- run folders --------------------------------------------------------------------------
def holds_run(folder: str | os.PathLike[str]) -> bool:
    """True if ``folder`` holds a model, checkpoint or history of a run."""
    return any((Path(folder) / name).exists() for name in RUN_FILES)


def check_out_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as an output folder for a new run; RunFolderError if it cannot be one.

    A new or empty folder (or one holding unrelated files) is fine; an existing file, a path
    through a file, or a folder holding another run (``RUN_FILES``) is refused.
    """
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            what = "is an existing file" if parent == path else f"lies inside the file {parent}"
            raise RunFolderError(f"{path} {what}; give a folder")
    if path.is_dir() and holds_run(path):
        raise RunFolderError(
            f"{path} holds another run ({', '.join(n for n in RUN_FILES if (path / n).exists())})"
            "; choose a new folder, or continue that run with --resume"
        )
    return path


def new_run_dir(root: str | os.PathLike[str], name: str) -> Path:
    """Create and return ``root/<name>-<YYYYmmdd-HHMMSS>``, unique (``-2``, ``-3``... added
    when two runs start in the same second)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1, 1000):
        folder = root / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            folder.mkdir()  # atomic: two processes never get the same folder
            return folder
        except FileExistsError:
            continue
    raise RunFolderError(f"{root}: could not create a new run folder for {stem}")


def link_latest(run_dir: str | os.PathLike[str]) -> Path:
    """Point ``<root>/latest`` at ``run_dir`` (a relative symbolic link, replaced atomically).

    Where symbolic links cannot be made (some file systems and Windows accounts), or where
    ``latest`` is a real folder (the output of an older convnp, never touched), the run
    folder's name is written to ``<root>/latest.txt`` instead. Returns the path written.
    """
    run_dir = Path(run_dir)
    link = run_dir.parent / LATEST
    temporary = run_dir.parent / f".{LATEST}.{os.getpid()}.tmp"
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(run_dir.name, target_is_directory=True)
        if link.exists() and not link.is_symlink():
            raise FileExistsError(link)
        os.replace(temporary, link)
        return link
    except OSError:
        temporary.unlink(missing_ok=True)
        fallback = run_dir.parent / f"{LATEST}.txt"
        io.write_atomic(fallback, f"{run_dir.name}\n".encode())
        return fallback


def remove_leftover_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files an interrupted atomic write of a run file left behind."""
    removed = []
    for name in RUN_FILES:
        for leftover in Path(folder).glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


# -- reading a trained model from any of the places it lives -----------------------------
def find_model_file(path: str | os.PathLike[str]) -> Path:
    """The file to read for ``path``: itself if a file, else the run folder's model file, or
    its checkpoint if training has not finished."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if not path.is_dir():
        return path
    for name in (io.MODEL_NAME, io.CHECKPOINT_NAME):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"{path}: not a run folder (no {io.MODEL_NAME} or {io.CHECKPOINT_NAME})"
    )


def load_model(path: str | os.PathLike[str]) -> tuple[Sequential, RunInfo, Path]:
    """(model, its RunInfo, the file read) from a model file, a checkpoint or a run folder."""
    file = find_model_file(path)
    _, metadata = io.load_tensors(file, metadata_only=True)
    if metadata.get("format") == io.CHECKPOINT_FORMAT:
        checkpoint = io.load_checkpoint(file)
        model, info = checkpoint["model"], checkpoint["info"]
    else:
        model, info = io.load(file), io.read_info(file)
    try:
        return model, RunInfo.from_dict(info), file
    except ValueError as error:
        raise ValueError(f"{file}: {error}") from None
