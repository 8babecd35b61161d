"""convnp.runtime.parallel: blocks mapped on threads come back in order, errors propagate, BLAS is
limited to one thread while the blocks run (then restored)."""

from __future__ import annotations

import numpy as np
import pytest

from convnp.layers import Conv2d, Flatten, Linear, ReLU
from convnp.model import Sequential
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


# -- predict_in_blocks: inference on several cores ---------------------------------------


def _small_model(rng):
    return Sequential(
        Conv2d(1, 2, 3, padding=1, dtype=np.float64, rng=rng),
        ReLU(),
        Conv2d(2, 3, 3, stride=2, dtype=np.float64, rng=rng),
        Flatten(),
        Linear(3 * 2 * 2, 4, dtype=np.float64, rng=rng),
    )


@pytest.mark.parametrize("block", [1, 3, 7, 100])
@pytest.mark.parametrize("threads", [1, 2])
def test_predict_in_blocks_equals_one_pass_and_restores_the_mode(rng, block, threads):
    model = _small_model(rng)
    x = rng.standard_normal((7, 1, 6, 6))
    one_pass = model.eval().forward(x)
    model.train()
    blocked = parallel.predict_in_blocks(model, x, block=block, threads=threads)
    np.testing.assert_allclose(blocked, one_pass, rtol=1e-13, atol=1e-13)
    assert model.training and all(layer.training for layer in model)
    assert all(layer._cache is None for layer in model)  # ran in eval mode: nothing cached


def test_predict_in_blocks_reports_bad_input_like_one_pass(rng):
    model = _small_model(rng)
    x = rng.standard_normal((6, 1, 6, 6))
    x[5, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="layer 0 of 5"):
        parallel.predict_in_blocks(model, rng.standard_normal((6, 2, 6, 6)), block=2)
    with pytest.raises(ValueError, match="NaN|finite"):
        parallel.predict_in_blocks(model, x, block=2)
    with pytest.raises(ValueError, match="block must be >= 1"):
        parallel.predict_in_blocks(model, x, block=0)
