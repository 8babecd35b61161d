"""Fuzzing the IDX reader: lying headers, odd dtypes and dimensions, truncation, gzip."""

from __future__ import annotations

import gzip
import struct

from fuzzing import examples, fuzz, mutate_bytes, outcome, run_in_child, scratch_folder
from hypothesis import strategies as st

from convnp.data import read_idx

DIMENSION = st.one_of(st.integers(0, 30), st.sampled_from([0, 1, 60000, 2**31, 2**32 - 1]))


@st.composite
def idx_files(draw: st.DrawFn) -> bytes:
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]) | st.integers(0, 255))
    ndim = draw(st.integers(0, 4) | st.sampled_from([32, 64, 65, 255]))
    dims = draw(st.lists(DIMENSION, min_size=ndim, max_size=ndim))
    payload = draw(st.binary(max_size=300))
    blob = bytes([0, 0, code, ndim]) + struct.pack(f">{ndim}I", *dims) + payload
    if draw(st.booleans()):
        blob = mutate_bytes(blob, draw(st.data()))
    return gzip.compress(blob) if draw(st.booleans()) else blob


def fuzz_idx_reader(count: int) -> dict:
    folder = scratch_folder()
    path = folder / "fuzzed.idx"

    def check(blob: bytes) -> str:
        path.write_bytes(blob)
        return outcome(lambda: read_idx(path), str(path))

    return fuzz(count, idx_files() | st.binary(max_size=64), check)


def test_fuzz_idx_reader():
    counts = run_in_child("test_fuzz_idx", "fuzz_idx_reader", examples(200))
    assert counts["inputs"] >= examples(200) // 2 and counts.get("refused", 0) > 0
