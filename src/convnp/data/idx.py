"""Read and write the IDX format of the MNIST files, plain or gzip-compressed.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the
array in C order, big-endian:

    magic = 0x00 0x00 <dtype code> <ndim>

A header can lie (corrupt or hostile files), so the reader computes the payload size
from the header, refuses sizes above ``max_bytes``, reads in chunks at most one byte more
than that size (also through gzip, so a small file that inflates to gigabytes costs
nothing) without allocating the announced size up front, and reports a short or long
payload as a ``ValueError`` that names the file.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import BinaryIO

import numpy as np

#: IDX dtype code -> big-endian NumPy dtype (the table in LeCun's MNIST page).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}

#: Largest payload ``read_idx`` accepts by default (full MNIST train images: 47 MB).
MAX_BYTES = 1 << 31
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not; detected from the content).

    Args:
        path: the file.
        max_bytes: refuse headers that announce a larger payload.

    Returns:
        The array, in native byte order, with the shape the header gives.

    Raises:
        ValueError: naming the file, if the magic number, dtype code or dimensions are
            invalid, the payload is shorter or longer than the header says, or the gzip
            stream is corrupt.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _read_stream(stream, path, max_bytes)
            return _read_stream(raw, path, max_bytes)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{path}: corrupt gzip stream ({error})") from None


def _read_stream(stream: BinaryIO, path: str, max_bytes: int) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(magic)} bytes, shorter than the header")
    if magic[:2] != b"\x00\x00":
        raise ValueError(
            f"{path}: not an IDX file: magic number starts with {magic[:2].hex()}, "
            "expected two zero bytes"
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    dims_bytes = stream.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ValueError(f"{path}: truncated header: {ndim} dimensions declared")
    shape = struct.unpack(f">{ndim}I", dims_bytes)
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
    if expected > max_bytes:
        raise ValueError(
            f"{path}: header declares shape {_short(shape)} of {dtype.name} ({expected} bytes), "
            f"more than max_bytes={max_bytes}"
        )
    payload = _read_at_most(stream, expected + 1)
    if len(payload) < expected:
        raise ValueError(
            f"{path}: truncated: header declares shape {_short(shape)} ({expected} bytes of data), "
            f"file holds {len(payload)}"
        )
    if len(payload) > expected:
        raise ValueError(
            f"{path}: trailing bytes after the {expected} bytes that shape {_short(shape)} declares"
        )
    try:  # NumPy refuses > 64 dimensions and shapes like (0, 2**32-1, 2**32-1) (size overflow)
        array = np.frombuffer(payload, dtype=dtype).reshape(shape)  # writable: payload's buffer
    except ValueError as error:
        raise ValueError(
            f"{path}: header declares shape {_short(shape)}, not an array ({error})"
        ) from None
    return array.astype(dtype.newbyteorder("="), copy=False)


def _short(shape: tuple[int, ...]) -> str:
    """A shape for a message, elided past 8 dimensions (a hostile header may declare 255)."""
    return str(shape) if len(shape) <= 8 else f"{str(shape[:8])[:-1]}, ... ({len(shape)} dims))"


def _read_at_most(stream: BinaryIO, limit: int) -> bytearray:
    """Up to ``limit`` bytes, in chunks: memory follows the data, not a header's claim."""
    payload = bytearray()
    while len(payload) < limit:
        chunk = stream.read(min(_CHUNK, limit - len(payload)))
        if not chunk:
            break
        payload += chunk
    return payload


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

    Args:
        path: the file to create or overwrite.
        array: uint8, int8, int16, int32, float32 or float64, with 1 to 255 dimensions,
            each below 2**32.

    Raises:
        ValueError: if the dtype or shape cannot be stored in IDX.
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        known = ", ".join(dtype.newbyteorder("=").name for dtype in IDX_DTYPES.values())
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX code (supported: {known})")
    if not 1 <= array.ndim <= 255 or max(array.shape) >= 1 << 32:
        raise ValueError(f"write_idx: shape {array.shape} cannot be stored in IDX")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    path = os.fspath(path)
    if path.endswith(".gz"):
        # No name and mtime 0 in the gzip header: equal arrays give byte-identical files.
        with open(path, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as stream:
            stream.write(header + payload)
    else:
        with open(path, "wb") as raw:
            raw.write(header + payload)
