"""Reading images to classify from untrusted files: each bad file a clear error naming it."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from convnp.data import images

SHAPE = (1, 6, 5)


def _npy(tmp_path, array, name="x.npy"):
    path = tmp_path / name
    np.save(path, array, allow_pickle=True)
    return path


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.arange(30, dtype=np.uint8).reshape(6, 5), np.arange(30).reshape(1, 1, 6, 5)),
        (np.full((1, 6, 5), 0.5), np.full((1, 1, 6, 5), 128)),  # floats in [0, 1] scaled
        (np.full((6, 5), 200.0, np.float32), np.full((1, 1, 6, 5), 200)),
        (np.ones((3, 1, 6, 5), bool), np.ones((3, 1, 6, 5))),  # a batch
        (np.full((4, 6, 5), 7, np.int64), np.full((4, 1, 6, 5), 7)),  # (N, H, W) when C = 1
    ],
)
def test_arrays_become_uint8_batches(tmp_path, array, expected):
    batch, notes = images.read_images(_npy(tmp_path, array), SHAPE)
    assert batch.dtype == np.uint8 and notes == []
    np.testing.assert_array_equal(batch, expected)


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((0, 6, 5)), r"empty array of shape \(0, 6, 5\)"),
        (np.zeros(0), r"empty array"),
        (np.array([["a"] * 5] * 6), "array of dtype <U1; images are numbers"),
        (np.zeros((6, 5), dtype=[("a", "f4")]), "array of dtype"),
        (np.zeros((6, 5), dtype="datetime64[s]"), "array of dtype datetime64"),
        (np.zeros((6, 5), dtype=complex), "array of dtype complex128"),
        (np.full((6, 5), np.nan), "image 0 contains NaN or inf"),
        (np.stack([np.zeros((1, 6, 5)), np.full((1, 6, 5), np.inf)]), "image 1 contains NaN"),
        (np.zeros((7, 5)), r"array of shape \(1, 1, 7, 5\); the model takes 1x6x5 images"),
        (np.zeros((2, 2, 6, 5)), r"array of shape \(2, 2, 6, 5\)"),
        (np.zeros((1, 1, 1, 6, 5)), r"array of shape \(1, 1, 1, 6, 5\)"),
        (np.full((6, 5), 300), r"values span \[300, 300\]"),
        (np.full((6, 5), -2.0), r"values span"),
    ],
)
def test_bad_arrays_name_the_file(tmp_path, array, problem):
    with pytest.raises(images.ImageFileError, match=f"x.npy: {problem}"):
        images.read_images(_npy(tmp_path, array), SHAPE)


def test_pickled_truncated_and_lying_npy_files(tmp_path):
    with pytest.raises(images.ImageFileError, match="x.npy: .*dtype object|x.npy: not a readable"):
        images.read_images(_npy(tmp_path, np.array([{"a": 1}], dtype=object)), SHAPE)
    path = _npy(tmp_path, np.zeros((6, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(images.ImageFileError, match="x.npy: not a readable .npy array"):
        images.read_images(path, SHAPE)
    # a header that declares 8 TB of data in a 200-byte file: refused, nothing allocated
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }"
    path.write_bytes(
        b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.ljust(117).encode() + b"\n"
    )
    with pytest.raises(images.ImageFileError, match="x.npy: not a readable"):
        images.read_images(path, SHAPE)
    blob = bytearray(_npy(tmp_path, np.zeros((6, 5), np.uint8)).read_bytes())
    blob[10] = 0  # a NUL in the header: NumPy's literal parser raised tokenize.TokenError
    path.write_bytes(bytes(blob))
    with pytest.raises(images.ImageFileError, match="x.npy: not a readable"):
        images.read_images(path, SHAPE)
    path.write_bytes(b"not numpy at all")
    with pytest.raises(images.ImageFileError, match="x.npy: not a readable"):
        images.read_images(path, SHAPE)
    with pytest.raises(FileNotFoundError, match="missing.npy: no such file"):
        images.read_images(tmp_path / "missing.npy", SHAPE)


def _png(width, height, data=b"\x00"):
    """A greyscale PNG whose header declares width x height (the data may not match)."""

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )


def test_png_images_are_converted_resized_and_noted(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    path = tmp_path / "digit.png"
    Image.new("RGB", (10, 12), (255, 255, 255)).save(path)
    batch, notes = images.read_images(path, SHAPE)
    assert batch.shape == (1, 1, 6, 5) and (batch == 255).all()
    assert notes == ["converted from RGB to L", "resized from 10x12 to 5x6"]
    batch, notes = images.read_images(path, (3, 12, 10))
    assert batch.shape == (1, 3, 12, 10) and notes == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (_png(100_000, 100_000), "refused as a decompression bomb"),
        (_png(9000, 9000), "9000x9000 pixels, more than 67,108,864"),
        (_png(4, 4, b"\x00"), "cannot read image"),  # truncated pixel data
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "cannot read image"),
        (b"GIF89a garbage", "cannot read image"),
    ],
)
def test_bad_and_bomb_pngs_name_the_file(tmp_path, content, problem):
    pytest.importorskip("PIL")
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(images.ImageFileError, match=f"bad.png: {problem}"):
        images.read_images(path, SHAPE)
