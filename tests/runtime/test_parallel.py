"""convnp.runtime.parallel: blocks mapped on threads come back in order, errors propagate, BLAS is
limited to one thread while the blocks run (then restored)."""

from __future__ import annotations

import numpy as np
import pytest

from convnp.runtime import parallel


def test_map_blocks_keeps_order_on_any_thread_count():
    blocks = [np.full(3, i) for i in range(9)]
    for threads in (1, 2, 4, 16):
        results = parallel.map_blocks(lambda b: b * 2, blocks, threads)
        assert [int(r[0]) for r in results] == [2 * i for i in range(9)]


def test_map_blocks_propagates_errors():
    def fail_on_three(value):
        if value == 3:
            raise ValueError("block 3 is bad")
        return value

    with pytest.raises(ValueError, match="block 3 is bad"):
        parallel.map_blocks(fail_on_three, list(range(6)), 2)


def test_blas_runs_single_threaded_inside_blocks_and_is_restored():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    controller = threadpoolctl.ThreadpoolController()
    blas = controller.select(user_api="blas")
    if not blas.lib_controllers:
        pytest.skip("no BLAS library found by threadpoolctl")
    before = [lib.num_threads for lib in blas.lib_controllers]

    def blas_threads(_):
        return [
            lib.num_threads
            for lib in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
        ]

    inside = parallel.map_blocks(blas_threads, [0, 1], 2)
    assert all(count == 1 for counts in inside for count in counts)
    assert [lib.num_threads for lib in blas.lib_controllers] == before


def test_available_cores_is_positive():
    assert parallel.available_cores() >= 1
