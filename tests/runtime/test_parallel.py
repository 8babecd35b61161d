"""convnp.runtime.parallel: blocks mapped on threads come back in order, errors propagate, BLAS is
limited to one thread while the blocks run (then restored); a training batch split across
threads gives the one-pass output, loss and gradients, and fit trains the same way split."""

from __future__ import annotations

import numpy as np
import pytest

from convnp import Sequential
from convnp.app import zoo
from convnp.layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from convnp.losses import CrossEntropyLoss, SquaredErrorLoss
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


# -- BatchSplitter: data-parallel training steps ------------------------------------------


def _one_pass_grads(model, loss, x, t):
    y = model.forward(x)
    error = loss.forward(y, t)
    model.backward(loss.backward(), input_grad=False)
    return y, error, [g.copy() for _, _, g in model.parameters()]


@pytest.mark.parametrize("recipe", ["bouvrie", "lenet5", "modern", "lenet5-classic"])
@pytest.mark.parametrize("threads", [2, 3])
def test_split_step_equals_one_pass_for_the_built_in_models(recipe, threads):
    chosen = zoo.get_recipe(recipe)
    model = chosen.build(dtype=np.float64, rng=np.random.default_rng(0))
    loss = chosen.make_loss()
    rng = np.random.default_rng(1)
    x, t = rng.random((7, 1, 28, 28)), rng.integers(0, 10, 7)
    y_ref, error_ref, grads_ref = _one_pass_grads(model, loss, x, t)

    splitter = parallel.BatchSplitter(model, loss, threads)
    assert splitter.supports(model)
    y, error = splitter.forward_backward(x, t)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14)
    assert error == pytest.approx(error_ref, rel=1e-12)
    for (name, _, grad), expected in zip(model.parameters(), grads_ref):
        np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-13, err_msg=name)


def test_split_step_handles_summed_losses_and_uneven_parts():
    rng = np.random.default_rng(2)
    model = Sequential(Conv2d(2, 3, 3, dtype=np.float64, rng=rng), ReLU(), Flatten(),
                       Linear(3 * 4 * 4, 5, dtype=np.float64, rng=rng))  # fmt: skip
    loss = SquaredErrorLoss(reduction="sum")
    x, t = rng.standard_normal((5, 2, 6, 6)), rng.integers(0, 5, 5)
    _, error_ref, grads_ref = _one_pass_grads(model, loss, x, t)
    _, error = parallel.BatchSplitter(model, loss, 2).forward_backward(x, t)
    assert error == pytest.approx(error_ref, rel=1e-12)
    for (_, _, grad), expected in zip(model.parameters(), grads_ref):
        np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-13)


def test_split_replicas_follow_the_shared_parameters_and_rebuild_after_astype():
    rng = np.random.default_rng(3)
    model = Sequential(Conv2d(1, 2, 3, rng=rng), ReLU(), Flatten(), Linear(2 * 4 * 4, 3, rng=rng))
    loss = CrossEntropyLoss()
    splitter = parallel.BatchSplitter(model, loss, 2)
    x, t = rng.random((4, 1, 6, 6), dtype=np.float32), rng.integers(0, 3, 4)
    splitter.forward_backward(x, t)
    model[0].params["weight"] += 1.0  # an optimizer's in-place update reaches every replica
    _, _, expected = _one_pass_grads(model, loss, x, t)
    splitter.forward_backward(x, t)
    np.testing.assert_allclose(model[0].grads["weight"], expected[0], rtol=1e-5, atol=1e-6)
    model.astype(np.float64)  # new arrays: replicas must be rebuilt, not left stale
    y, _ = splitter.forward_backward(x.astype(np.float64), t)
    assert y.dtype == np.float64


def test_batch_norm_and_dropout_models_are_never_split():
    rng = np.random.default_rng(4)
    for extra in (BatchNorm2d(2), Dropout(0.5, rng=rng)):
        model = Sequential(Conv2d(1, 2, 3, rng=rng), extra, MaxPool2d(2))
        splitter = parallel.BatchSplitter(model, CrossEntropyLoss(), 2)
        assert not splitter.supports(model)
        assert not splitter.worthwhile(np.zeros((4096, 1, 28, 28), dtype=np.float32))


def test_only_batches_with_enough_work_are_split():
    model = zoo.get_recipe("modern").build(rng=np.random.default_rng(0))
    splitter = parallel.BatchSplitter(model, CrossEntropyLoss(), 2)
    small, large = np.zeros((8, 1, 28, 28), np.float32), np.zeros((128, 1, 28, 28), np.float32)
    assert not splitter.worthwhile(small)
    assert splitter.worthwhile(large) == (parallel._blas_controller() is not None)
    assert not parallel.BatchSplitter(model, CrossEntropyLoss(), 1).worthwhile(large)


def test_fit_with_split_batches_matches_fit_in_one_pass(monkeypatch):
    from convnp.data import DataLoader
    from convnp.train import fit

    monkeypatch.setattr(parallel, "MIN_SPLIT_VALUES", 0)  # split every batch
    rng = np.random.default_rng(5)
    images, labels = rng.random((48, 1, 12, 12)), rng.integers(0, 3, 48)
    runs = []
    for threads in (1, 2):
        model = Sequential(
            Conv2d(1, 4, 3, dtype=np.float64, rng=np.random.default_rng(0)),
            ReLU(),
            MaxPool2d(2),
            Flatten(),
            Linear(4 * 5 * 5, 3, dtype=np.float64, rng=np.random.default_rng(1)),
        )
        loss = CrossEntropyLoss()
        optimizer = zoo.get_recipe("modern").make_optimizer(model)
        loader = DataLoader(images, labels, batch_size=16, seed=0, normalize=None, dtype=np.float64)
        history = fit(model, loss, optimizer, loader, epochs=2, progress=False, threads=threads)
        runs.append((history, model.state_dict()))
    (history_one, state_one), (history_split, state_split) = runs
    for one, split in zip(history_one, history_split):
        assert split["train_loss"] == pytest.approx(one["train_loss"], rel=1e-10)
    for name, value in state_one.items():
        np.testing.assert_allclose(state_split[name], value, rtol=1e-9, atol=1e-12)
