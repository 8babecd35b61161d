"""Backward after an eval-mode forward (issue 13), and inference that keeps nothing.

As in PyTorch, a layer in eval mode back-propagates through its eval-mode function: batch
norm normalises with its running statistics (constants, so ∂E/∂x = (γ/σ)·dy), dropout is the
identity, every other layer is the same function as in training. Each family is checked on
random shapes against PyTorch's eval-mode autograd (float64, 1e-10, through ``to_torch``)
and against finite differences of the eval-mode function. Within ``no_grad()`` (the
inference paths: ``Sequential.predict``, ``train.evaluate``, ``predict_in_blocks``) nothing
is kept, so a deep network's inference holds only the arrays in flight.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch
from sample_networks import randomise_state

from convnp import layers as L
from convnp import train
from convnp.layers.base import Layer
from convnp.model import Sequential
from convnp.runtime import parallel

torch = pytest.importorskip("torch")
from convnp.interop.torch import to_torch  # noqa: E402

Builder = Callable[[np.random.Generator], tuple[Layer, tuple[int, ...]]]


def _sizes(rng: np.random.Generator, count: int, low: int = 5, high: int = 9) -> tuple[int, ...]:
    return tuple(int(size) for size in rng.integers(low, high + 1, count))


def _maps(rng: np.random.Generator, channels: int, nd: int) -> tuple[int, ...]:
    """A random (N, C, *spatial) shape: N in 2..3, each spatial size in 5..9."""
    return (int(rng.integers(2, 4)), channels, *_sizes(rng, nd))


def _conv(nd: int, **options) -> Builder:
    def build(rng):
        channels = int(rng.integers(1, 4))
        stride = int(rng.integers(1, 3))
        layer = (L.Conv1d, L.Conv2d, L.Conv3d)[nd - 1](
            channels, int(rng.integers(1, 4)), 3, stride=stride, padding=1, rng=rng, **options
        )
        return layer, _maps(rng, channels, nd)

    return build


def _parameter_free(make: Callable[[int], Layer], nd: int) -> Builder:
    def build(rng):
        channels = int(rng.integers(1, 4))
        return make(nd), _maps(rng, channels, nd)

    return build


def _batch_norm(nd: int, **options) -> Builder:
    """BatchNormNd with random running statistics (moved off 0 and 1 by randomise_state);
    nd = 0 is BatchNorm1d over features (N, C)."""

    def build(rng):
        channels = int(rng.integers(1, 5))
        layer = (L.BatchNorm1d, L.BatchNorm1d, L.BatchNorm2d, L.BatchNorm3d)[nd](
            channels, **options
        )
        return layer, _maps(rng, channels, nd)

    return build


def _features(make: Callable[[int, int, np.random.Generator], Layer]) -> Builder:
    def build(rng):
        size_in, size_out = _sizes(rng, 2, 2, 7)
        return make(size_in, size_out, rng), (int(rng.integers(1, 4)), size_in)

    return build


def _elementwise(cls: type[Layer]) -> Builder:
    return lambda rng: (cls(), _maps(rng, int(rng.integers(1, 4)), 2))


def _local(rng):
    channels, height, width = int(rng.integers(1, 3)), *_sizes(rng, 2)
    layer = L.LocallyConnected2d(channels, 2, (height, width), 3, padding=1, rng=rng)
    return layer, (2, channels, height, width)


FAMILIES: dict[str, Builder] = {
    "Conv1d": _conv(1),
    "Conv2d": _conv(2, dilation=(1, 2)),
    "Conv3d": _conv(3),
    "Conv2d-flip-no-bias": _conv(2, flip_kernel=True, bias=False),
    "LocallyConnected2d": _local,
    "FeatureMapCombination": lambda rng: (
        L.FeatureMapCombination(2, 3, 3, padding="same", rng=rng),
        _maps(rng, 2, 2),
    ),
    "Subsample2d": lambda rng: (
        L.Subsample2d(3, 2, rng=rng),  # sizes multiples of 2
        (2, 3, *(2 * size for size in _sizes(rng, 2, 2, 4))),
    ),
    "MaxPool1d": _parameter_free(lambda nd: L.MaxPool1d(3, stride=2, padding=1), 1),
    "MaxPool2d": _parameter_free(lambda nd: L.MaxPool2d(2, ceil_mode=True), 2),
    "MaxPool3d": _parameter_free(lambda nd: L.MaxPool3d(2, dilation=(1, 2, 1)), 3),
    "AvgPool2d": _parameter_free(lambda nd: L.AvgPool2d(3, stride=2, padding=1), 2),
    "LPPool2d": _parameter_free(lambda nd: L.LPPool2d(2, 2), 2),
    "WeightedAvgPool2d": _parameter_free(lambda nd: L.WeightedAvgPool2d(3, stride=2), 2),
    "AdaptiveAvgPool3d": _parameter_free(lambda nd: L.AdaptiveAvgPool3d((2, 3, None)), 3),
    "AdaptiveMaxPool1d": _parameter_free(lambda nd: L.AdaptiveMaxPool1d(3), 1),
    "AdaptiveMaxPool2d": _parameter_free(lambda nd: L.AdaptiveMaxPool2d((3, 2)), 2),
    "GlobalMaxPool2d": _parameter_free(lambda nd: L.GlobalMaxPool2d(), 2),
    "Upsample-nearest": _parameter_free(lambda nd: L.Upsample(scale_factor=2), 2),
    "Upsample-bilinear": _parameter_free(
        lambda nd: L.Upsample(scale_factor=1.5, mode="bilinear"), 2
    ),
    "Flatten": _parameter_free(lambda nd: L.Flatten(), 2),
    "Linear": _features(lambda n_in, n_out, rng: L.Linear(n_in, n_out, rng=rng)),
    "EuclideanRBF": _features(lambda n_in, n_out, rng: L.EuclideanRBF(n_in, n_out, rng=rng)),
    **{cls.__name__: _elementwise(cls) for cls in (L.Sigmoid, L.Tanh, L.ScaledTanh, L.ReLU)},
    "LeakyReLU": lambda rng: (L.LeakyReLU(0.2), _maps(rng, 2, 1)),
    "ELU": lambda rng: (L.ELU(0.7), _maps(rng, 2, 1)),
    "GELU": lambda rng: (L.GELU(), _maps(rng, 2, 1)),
    "GELU-tanh": lambda rng: (L.GELU("tanh"), _maps(rng, 2, 1)),
    "Softmax": lambda rng: (L.Softmax(dim=1), _maps(rng, 3, 1)),
    "Dropout": lambda rng: (L.Dropout(0.5, rng=rng), _maps(rng, 2, 2)),
    "Dropout2d": lambda rng: (L.Dropout2d(0.5, rng=rng), _maps(rng, 2, 2)),
    "BatchNorm1d-features": _batch_norm(0),
    "BatchNorm1d": _batch_norm(1, momentum=None),
    "BatchNorm2d": _batch_norm(2),
    "BatchNorm2d-no-bias": _batch_norm(2, bias=False),
    "BatchNorm3d-no-affine": _batch_norm(3, affine=False, eps=1e-3),
    "BatchNorm2d-batch-statistics": _batch_norm(2, track_running_stats=False),
    "ConvTranspose2d": lambda rng: (
        L.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, rng=rng),
        _maps(rng, 2, 2),
    ),
}
SEEDS = (0, 1)
CASES = [(name, seed) for name in FAMILIES for seed in SEEDS]


def _eval_layer(name: str, seed: int) -> tuple[Layer, np.ndarray, np.random.Generator]:
    """The family's layer in float64 and eval mode with non-trivial state, and a random input."""
    rng = np.random.default_rng(seed)
    layer, shape = FAMILIES[name](rng)
    randomise_state(Sequential(layer), seed)
    layer.astype(np.float64).eval()
    x = rng.standard_normal(shape)
    x[np.abs(x) < 0.01] += 0.02  # off ReLU's kink, which a step of 3e-4 must not cross
    return layer, x, rng


def test_every_layer_class_has_a_family() -> None:
    covered = {type(FAMILIES[name](np.random.default_rng(0))[0]) for name in FAMILIES}
    expected = {getattr(L, name) for name in L.__all__} - {L.Layer}
    unpooling = {L.MaxUnpool1d, L.MaxUnpool2d, L.MaxUnpool3d}  # take indices: tested below
    same_code = {L.AvgPool1d, L.AvgPool3d, L.LPPool1d, L.LPPool3d, L.AdaptiveAvgPool1d}
    same_code |= {L.AdaptiveAvgPool2d, L.AdaptiveMaxPool3d, L.GlobalAvgPool2d}
    same_code |= {getattr(L, f"ConvTranspose{nd}d", L.Layer) for nd in (1, 3)}
    assert expected - unpooling - same_code <= covered, expected - unpooling - same_code - covered


@pytest.mark.parametrize("name, seed", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_eval_mode_backward_matches_torch(name: str, seed: int) -> None:
    layer, x, rng = _eval_layer(name, seed)
    twin = to_torch(Sequential(layer).eval())[0]
    assert not twin.training
    before = {key: value.copy() for key, value in layer.buffers.items()}
    assert_matches_torch(layer, twin, x, rng)
    for key, value in before.items():  # eval mode never updates the running statistics
        np.testing.assert_array_equal(layer.buffers[key], value)


@pytest.mark.parametrize("name, seed", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_eval_mode_backward_matches_finite_differences(name: str, seed: int) -> None:
    layer, x, _ = _eval_layer(name, seed)
    assert_gradients_match_numeric(layer, x, training=False)
    assert not layer.training


def test_batch_norm_eval_gradient_is_the_affine_map(rng) -> None:
    """Running statistics are constants: ∂E/∂x = (γ/σ)·dy, ∂E/∂γ = Σ dy·x̂, ∂E/∂β = Σ dy."""
    layer = L.BatchNorm2d(3, dtype=np.float64)
    randomise_state(Sequential(layer), 4)
    layer.eval()
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal(x.shape)
    layer.forward(x)
    dx = layer.backward(dy)
    channel = (1, -1, 1, 1)
    sigma = np.sqrt(layer.buffers["running_var"] + layer.eps).reshape(channel)
    x_hat = (x - layer.buffers["running_mean"].reshape(channel)) / sigma
    np.testing.assert_allclose(dx, layer.params["weight"].reshape(channel) / sigma * dy)
    np.testing.assert_allclose(layer.grads["weight"], (dy * x_hat).sum(axis=(0, 2, 3)))
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_unpool_eval_mode_backward_matches_torch(nd: int, rng) -> None:
    pool_t = getattr(torch.nn, f"MaxPool{nd}d")(2, return_indices=True)
    spatial = (2 * size for size in _sizes(rng, nd, 2, 4))  # even: the default output size
    values, indices = pool_t(torch.tensor(rng.standard_normal((2, 3, *spatial))))
    layer = (L.MaxUnpool1d, L.MaxUnpool2d, L.MaxUnpool3d)[nd - 1](2).eval()
    x = values.numpy().copy()
    y = layer.forward(x, indices.numpy())
    dy = rng.standard_normal(y.shape)
    x_t = values.clone().requires_grad_()
    y_t = getattr(torch.nn, f"MaxUnpool{nd}d")(2).eval()(x_t, indices)
    y_t.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.backward(dy), x_t.grad.numpy(), rtol=1e-10, atol=1e-10)


# -- inference keeps nothing --------------------------------------------------------------
def _deep_model() -> Sequential:
    """Sixteen element-wise layers: each output is a new array of the input's size, so what
    a forward keeps alive is easy to count; then one score per channel, for the loss."""
    layers = (L.Tanh() if i % 2 else L.ReLU() for i in range(16))
    return Sequential(*layers, L.GlobalAvgPool2d(), L.Flatten())


def _peak_bytes(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_inference_paths_keep_no_caches_and_bounded_memory(rng) -> None:
    model = _deep_model().eval()
    x = rng.standard_normal((64, 4, 32, 32))  # 2 MiB
    size = x.nbytes
    labels = np.zeros(len(x), dtype=np.int64)
    inference = {
        "predict": lambda: model.predict(x, batch_size=len(x)),
        "predict_in_blocks": lambda: parallel.predict_in_blocks(model, x, block=len(x)),
        "evaluate": lambda: train.evaluate(model, [(x, labels)], _MeanLoss()),
    }
    for name, run in inference.items():
        model.train().forward(x)  # a training forward fills every cache first
        model.eval()
        peak = _peak_bytes(run)
        assert all(layer._cache is None for layer in model), name  # and dropped them
        assert all(layer.grad_enabled for layer in model), name  # the setting is restored
        # measured 2.0x: an output and its successor in flight, whatever the depth
        assert peak < 3 * size, f"{name}: peak {peak / size:.1f}x the input"
    # the same forward with grad enabled keeps every layer's output: the bound is not vacuous
    kept = _peak_bytes(lambda: model.forward(x))
    assert kept > 12 * size  # measured: 16x, one output per element-wise layer
    assert all(layer._cache is not None for layer in model)


class _MeanLoss:
    """What ``train.evaluate`` needs of a loss: a scalar forward (argmax decides classes)."""

    reduction = "mean"

    def forward(self, y: np.ndarray, labels: np.ndarray) -> float:
        return float(y.mean())
