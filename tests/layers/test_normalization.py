"""BatchNorm1d/2d/3d: finite differences, PyTorch parity, behaviour (DESIGN 3.6)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp import io
from convnp.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, Linear
from convnp.model import Sequential

# (class, input shape, keyword arguments)
CASES = [
    (BatchNorm2d, (1, 3, 4, 5), {}),  # batch 1: statistics over the spatial positions
    (BatchNorm2d, (4, 2, 3, 3), {"eps": 1e-3, "momentum": 0.3}),
    (BatchNorm2d, (3, 5, 1, 2), {"affine": False}),
    (BatchNorm2d, (2, 3, 5, 4), {"track_running_stats": False}),
    (BatchNorm1d, (6, 4), {}),
    (BatchNorm1d, (3, 2, 7), {"momentum": 0.5}),
    (BatchNorm3d, (2, 2, 3, 2, 3), {}),
    (BatchNorm2d, (3, 2, 2, 3), {"momentum": None}),  # cumulative moving average
    (BatchNorm1d, (5, 3), {"bias": False}),  # y = γ x̂
]
TORCH_CLASSES = {BatchNorm1d: "BatchNorm1d", BatchNorm2d: "BatchNorm2d", BatchNorm3d: "BatchNorm3d"}


def _layer(cls, shape, kwargs, rng, dtype=np.float64):
    layer = cls(shape[1], dtype=dtype, **kwargs)
    if layer.affine:  # γ, β away from their 1/0 init, so a swapped gradient shows
        layer.params["weight"][...] = rng.uniform(0.5, 2.0, shape[1])
    if "bias" in layer.params:
        layer.params["bias"][...] = rng.standard_normal(shape[1])
    return layer


def _input(shape, rng, dtype=np.float64):
    return (3.0 * rng.standard_normal(shape) + 1.5).astype(dtype)


@pytest.mark.parametrize("cls,shape,kwargs", CASES)
def test_gradients_match_finite_differences(cls, shape, kwargs, rng):
    layer = _layer(cls, shape, kwargs, rng)
    assert_gradients_match_numeric(layer, _input(shape, rng))


@pytest.mark.parametrize("cls,shape,kwargs", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_training_forward_and_gradients_match_torch(cls, shape, kwargs, dtype, rng):
    torch = pytest.importorskip("torch")
    layer = _layer(cls, shape, kwargs, rng, dtype)
    twin = getattr(torch.nn, TORCH_CLASSES[cls])(shape[1], **kwargs)
    twin = twin.to(getattr(torch, np.dtype(dtype).name))  # its running buffers too
    assert_matches_torch(layer, twin, _input(shape, rng, dtype), rng)


@pytest.mark.parametrize("cls,shape,kwargs", [case for case in CASES if "track" not in str(case)])
def test_running_statistics_and_eval_match_torch(cls, shape, kwargs, rng):
    """Running mean (biased-free update) and unbiased running variance, then eval mode."""
    torch = pytest.importorskip("torch")
    layer = _layer(cls, shape, kwargs, rng)
    twin = getattr(torch.nn, TORCH_CLASSES[cls])(shape[1], **kwargs).double()
    with torch.no_grad():
        for key, value in layer.params.items():
            getattr(twin, key).copy_(torch.tensor(value))
    for _ in range(3):
        x = _input(shape, rng)
        layer.forward(x)
        twin(torch.tensor(x))
    for key in layer.buffers:  # running_mean, running_var (and num_batches_tracked)
        expected = getattr(twin, key).numpy()
        np.testing.assert_allclose(layer.buffers[key], expected, rtol=1e-12, err_msg=key)
    layer.eval()
    twin.eval()
    x = _input(shape, rng)
    with torch.no_grad():
        expected = twin(torch.tensor(x)).numpy()
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)


def test_normalises_each_channel_to_zero_mean_unit_variance(rng):
    layer = BatchNorm2d(3, dtype=np.float64)
    y = layer.forward(_input((5, 3, 4, 4), rng))
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-4)  # eps=1e-5 shrinks it


def test_compact_backward_formula(rng):
    """dx = (1/m)·γ/σ·(m·dy − Σdy − x̂·Σ(dy·x̂)), the docstring's formula, written out."""
    layer = _layer(BatchNorm1d, (7, 2), {}, rng)
    x = _input((7, 2), rng)
    dy = rng.standard_normal((7, 2))
    layer.forward(x)
    dx = layer.backward(dy)
    m = 7
    sigma = np.sqrt(x.var(axis=0) + layer.eps)
    x_hat = (x - x.mean(axis=0)) / sigma
    gamma = layer.params["weight"]
    expected = gamma / sigma / m * (m * dy - dy.sum(0) - x_hat * (dy * x_hat).sum(0))
    np.testing.assert_allclose(dx, expected, atol=1e-12)


def test_eval_uses_running_statistics_and_no_grad_keeps_nothing(rng):
    layer = BatchNorm2d(2, momentum=1.0, dtype=np.float64)
    x = _input((4, 2, 3, 3), rng)
    layer.forward(x)  # momentum 1: the running statistics are this batch's
    layer.eval()
    probe = _input((1, 2, 3, 3), rng)
    with layer.no_grad():
        y = layer.forward(probe)
    assert layer._cache is None
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), ddof=1, keepdims=True)
    np.testing.assert_allclose(y, (probe - mean) / np.sqrt(var + layer.eps), atol=1e-12)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(y)
    before = layer.buffers["running_mean"].copy()
    layer.forward(_input((4, 2, 3, 3), rng))
    np.testing.assert_array_equal(layer.buffers["running_mean"], before)  # eval never updates


def test_without_running_stats_eval_uses_the_batch(rng):
    layer = BatchNorm1d(3, track_running_stats=False, dtype=np.float64)
    assert layer.buffers == {}
    x = _input((6, 3), rng)
    y_train = layer.forward(x)
    layer.eval()
    np.testing.assert_allclose(layer.forward(x), y_train, atol=1e-12)


def test_buffers_are_saved_with_the_model(rng, tmp_path):
    model = Sequential(Linear(4, 3, rng=rng), BatchNorm1d(3))
    model.forward(rng.standard_normal((8, 4)).astype(np.float32))
    state = model.state_dict()
    assert set(state) >= {"1.running_mean", "1.running_var", "1.weight", "1.bias"}
    io.save(model, tmp_path / "bn.safetensors")
    loaded = io.load(tmp_path / "bn.safetensors")
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(loaded[1].buffers[key], model[1].buffers[key])
    assert loaded[1].config() == model[1].config()


def test_float32_stays_float32(rng):
    layer = BatchNorm2d(3, affine=False)
    x = _input((2, 3, 4, 4), rng, np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32 and layer.backward(y).dtype == np.float32
    assert layer.buffers["running_var"].dtype == np.float32
    layer.eval()
    assert layer.forward(x).dtype == np.float32
    assert layer.astype(np.float64).buffers["running_mean"].dtype == np.float64


def test_repr_config_and_errors(rng):
    layer = BatchNorm2d(4, momentum=0.2, affine=False)
    assert repr(layer) == "BatchNorm2d(4, eps=1e-05, momentum=0.2, affine=False)"
    assert BatchNorm2d(**layer.config()).config() == layer.config()
    with pytest.raises(
        ValueError, match=r"BatchNorm2d\(4.*expected input \(N, 4, H, W\).*\(2, 3, 5, 5\)"
    ):
        layer.forward(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected input \(N, 4\) or \(N, 4, L\)"):
        BatchNorm1d(4).forward(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm1d(4).forward(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm2d(4, momentum=1.5)
    with pytest.raises(RuntimeError, match="before forward"):
        BatchNorm2d(4).backward(np.zeros((2, 4, 3, 3), np.float32))
    trained = BatchNorm1d(2)
    trained.forward(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"backward expected dy of shape \(3, 2\)"):
        trained.backward(np.ones((3, 3), np.float32))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4, 2)])
def test_empty_batch_gives_pytorchs_result(shape, training, rng):
    """An empty output, statistics untouched, zero parameter gradients (PyTorch's)."""
    cls = BatchNorm1d if len(shape) == 2 else BatchNorm2d
    layer = _layer(cls, shape, {"momentum": None}, rng).train(training)
    x = np.zeros(shape)
    y = layer.forward(x)
    assert y.shape == shape
    np.testing.assert_array_equal(layer.buffers["running_mean"], 0.0)
    np.testing.assert_array_equal(layer.buffers["running_var"], 1.0)
    assert layer.buffers["num_batches_tracked"] == (1 if training else 0)  # PyTorch counts it
    if training:
        assert layer.backward(np.zeros(shape)).shape == shape
        np.testing.assert_array_equal(layer.grads["weight"], 0.0)
        np.testing.assert_array_equal(layer.grads["bias"], 0.0)


def test_momentum_none_and_bias_false_round_trip_through_model_files(tmp_path, rng):
    model = Sequential(BatchNorm1d(3, momentum=None, dtype=np.float64), BatchNorm1d(3, bias=False))
    model[0].forward(_input((4, 3), rng))
    io.save(model, tmp_path / "m.safetensors")
    loaded = io.load(tmp_path / "m.safetensors")
    assert loaded[0].momentum is None and loaded[0].buffers["num_batches_tracked"] == 1
    assert "bias" not in loaded[1].params and repr(loaded[1]).endswith("bias=False)")
