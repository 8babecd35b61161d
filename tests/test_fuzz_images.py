"""Fuzzing the image readers of ``convnp predict``: .npy arrays of any dtype and shape,
lying .npy headers, and PNG files (valid, mutated, or declaring huge sizes)."""

from __future__ import annotations

import io as bytes_io
import struct
import zlib

import numpy as np
from fuzzing import examples, fuzz, mutate_bytes, outcome, run_in_child, scratch_folder
from hypothesis import strategies as st

from convnp.data import images

DTYPES = st.sampled_from(
    ["u1", "i8", "f4", "f8", "f2", "?", "c8", "U3", "S2", "M8[s]", "m8[s]", "O",
     [("a", "f4"), ("b", "i2")]]
)  # fmt: skip
SHAPES = st.lists(st.integers(0, 7) | st.sampled_from([1, 5, 6]), max_size=5).map(tuple)
VALUES = st.sampled_from([0, 1, 255, 256, -1, 0.5, np.nan, np.inf, 1e30])
MODEL_SHAPES = st.sampled_from([(1, 6, 5), (3, 6, 5), (2, 6, 5)])


def _npy(dtype: object, shape: tuple[int, ...], value: object) -> bytes:
    stream = bytes_io.BytesIO()
    array = np.zeros(shape, dtype=np.dtype(dtype))
    if array.dtype.kind in "biufc" and array.dtype.fields is None:
        with np.errstate(invalid="ignore", over="ignore"):
            array[...] = np.asarray(value).astype(array.dtype)
    np.save(stream, array, allow_pickle=True)
    return stream.getvalue()


def _png(width: int, height: int, mode: str) -> bytes:
    from PIL import Image

    stream = bytes_io.BytesIO()
    Image.new(mode, (width, height)).save(stream, format="PNG")
    return stream.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + crc


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["npy", "npy", "png", "bomb"]))
    if kind == "npy":
        blob, suffix = _npy(draw(DTYPES), draw(SHAPES), draw(VALUES)), ".npy"
    elif kind == "png":
        size = st.integers(1, 40)
        blob = _png(
            draw(size),
            draw(size),
            draw(st.sampled_from(["L", "RGB", "RGBA", "1", "P", "LA", "I;16"])),
        )
        suffix = ".png"
    else:
        dimension = st.integers(1, 2**31 - 1) | st.sampled_from([9000, 2**16, 2**31 - 1])
        blob, suffix = _png_header_only(draw(dimension), draw(dimension)), ".png"
    if draw(st.booleans()):
        blob = mutate_bytes(blob, draw(st.data()))
    return suffix, blob


def fuzz_image_readers(count: int) -> dict:
    folder = scratch_folder()

    def check(case: tuple[tuple[str, bytes], tuple[int, int, int]]) -> str:
        (suffix, blob), shape = case
        path = folder / f"fuzzed{suffix}"
        path.write_bytes(blob)
        return outcome(lambda: images.read_images(path, shape), str(path))

    return fuzz(count, st.tuples(image_files(), MODEL_SHAPES), check)


def test_fuzz_image_readers():
    counts = run_in_child("test_fuzz_images", "fuzz_image_readers", examples(200))
    assert counts["inputs"] >= examples(200) // 2 and counts.get("accepted", 0) > 0
