"""IDX reader/writer: round trips, the byte layout, and every way a file can be wrong."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from convnp.data.idx import IDX_DTYPES, read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _header(code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 1, 3, 2), (0, 28, 28)])
def test_round_trip(tmp_path, rng, suffix, dtype, shape):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal(shape).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_byte_layout_matches_the_format(tmp_path):
    # Built by hand, not by write_idx: magic 00 00 0B 02, dims big-endian, int16 big-endian.
    data = bytes.fromhex("00000b020000000200000003") + struct.pack(">6h", 1, -2, 3, 256, -300, 7)
    back = read_idx(_write(tmp_path / "x.idx", data))
    np.testing.assert_array_equal(back, [[1, -2, 3], [256, -300, 7]])
    write_idx(tmp_path / "y.idx", back)
    assert (tmp_path / "y.idx").read_bytes() == data


def test_gzip_detected_from_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "a.gz", array)
    renamed = (tmp_path / "a.gz").rename(tmp_path / "plain-name")
    np.testing.assert_array_equal(read_idx(renamed), array)


def test_written_gzip_is_reproducible(tmp_path):
    array = np.arange(100, dtype=np.int32)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_uint8_result_is_writable(tmp_path):
    write_idx(tmp_path / "a.idx", np.zeros((2, 2), np.uint8))
    array = read_idx(tmp_path / "a.idx")
    array[0, 0] = 1  # datasets hand these arrays to users, who may edit them


GOOD = _header(0x08, (2, 3)) + bytes(range(6))


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the header"),
        (b"\x00\x00\x08", "shorter than the header"),
        (b"\x89PNG\r\n\x1a\n" + bytes(20), "expected two zero bytes"),
        (b"a,b,c\n1,2,3\n", "expected two zero bytes"),
        (_header(0x0A, (2, 3)) + bytes(6), "unknown IDX dtype code 0x0A"),
        (bytes([0, 0, 8, 0]), "0 dimensions"),
        (bytes([0, 0, 8, 3]) + bytes(8), "truncated header"),
        (GOOD[:-1], "truncated"),
        (_header(0x08, (60000, 28, 28)) + bytes(100), "truncated"),
        (_header(0x0D, (4,)) + bytes(15), "truncated"),
        (GOOD + b"\x00", "trailing bytes"),
        (GOOD + GOOD, "trailing bytes"),
        # issue 12: NumPy's own errors surfaced without the file name
        (bytes([0, 0, 8, 65]) + bytes([0, 0, 0, 1]) * 65 + b"\x00", r"\(65 dims\)\), not an array"),
        (_header(0x08, (0, 2**32 - 1, 2**32 - 1)), r"shape \(0, 4294967295, 4294967295\), not an"),
        (bytes([0, 0, 8, 255]) + bytes(4 * 255), r"\(255 dims\)\), not an array"),
    ],
)
def test_bad_files_raise_value_error_naming_the_file(tmp_path, suffix, data, message):
    path = _write(tmp_path / f"bad.idx{suffix}", data)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_good_file_in_the_bad_file_table_reads(tmp_path):
    np.testing.assert_array_equal(
        read_idx(_write(tmp_path / "good.idx", GOOD)), np.arange(6).reshape(2, 3)
    )


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[: len(blob) // 2],  # gzip stream cut short
        lambda blob: blob[:10] + bytes(len(blob) - 10),  # deflate data zeroed
        lambda blob: blob[:-8] + b"\xff" * 8,  # CRC and size trailer wrong
    ],
)
def test_corrupt_gzip_raises_value_error(tmp_path, damage):
    blob = gzip.compress(_header(0x08, (50, 50)) + np.random.default_rng(0).bytes(2500))
    path = tmp_path / "bad.gz"
    path.write_bytes(damage(blob))
    with pytest.raises(ValueError, match="gzip|truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_absurd_header_refused_before_reading(tmp_path):
    path = _write(tmp_path / "huge.idx", _header(0x0E, (1 << 31, 1 << 31, 1 << 31)))
    with pytest.raises(ValueError, match="max_bytes"):
        read_idx(path)
    small = _write(tmp_path / "small.idx", GOOD)
    with pytest.raises(ValueError, match="max_bytes=5"):
        read_idx(small, max_bytes=5)
    assert read_idx(small, max_bytes=6).shape == (2, 3)


def _peak_bytes(path: Path) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            read_idx(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_lying_header_does_not_allocate_the_announced_size(tmp_path):
    # Header announces 1 GiB (under max_bytes) but the file holds 100 bytes.
    path = _write(tmp_path / "liar.idx", _header(0x08, (1 << 30,)) + bytes(100))
    assert _peak_bytes(path) < 4 << 20


def test_gzip_bomb_is_read_only_one_byte_past_the_payload(tmp_path):
    # 6 bytes of data declared, then 64 MiB of zeros that compress to ~64 KiB.
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(GOOD + bytes(64 << 20), compresslevel=1))
    assert path.stat().st_size < 1 << 20
    assert _peak_bytes(path) < 8 << 20


@pytest.mark.parametrize(
    "array",
    [np.zeros(3, np.int64), np.zeros(3, np.uint16), np.zeros(3, bool), np.float32(1.0)],
    ids=["int64", "uint16", "bool", "0-d"],
)
def test_write_rejects_what_idx_cannot_hold(tmp_path, array):
    with pytest.raises(ValueError, match="write_idx"):
        write_idx(tmp_path / "x.idx", array)


def test_dtype_table_matches_the_format():
    assert {code: dtype.str for code, dtype in IDX_DTYPES.items()} == {
        0x08: "|u1",
        0x09: "|i1",
        0x0B: ">i2",
        0x0C: ">i4",
        0x0D: ">f4",
        0x0E: ">f8",
    }


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.idx")
