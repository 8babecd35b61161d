"""The allocator tuning is applied where glibc exists and is harmless to call twice."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from convnp.runtime.allocator import keep_freed_memory


def test_keep_freed_memory_applies_on_glibc_and_arrays_still_work():
    applied = keep_freed_memory()
    if sys.platform.startswith("linux"):
        assert applied is True
    else:
        pytest.skip("glibc's mallopt exists on Linux only")
    assert keep_freed_memory() is True
    big = np.ones((64, 2**20), np.float32)
    del big
    assert np.zeros((64, 2**20), np.float32).sum() == 0.0
