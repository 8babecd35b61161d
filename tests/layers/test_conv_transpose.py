"""ConvTranspose1d/2d/3d: finite differences, PyTorch parity, the adjoint of Conv, errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp import Sequential, io
from convnp.layers import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)
from convnp.layers._conv_ops import skewed_bytes

torch = pytest.importorskip("torch")

CLASSES = {1: ConvTranspose1d, 2: ConvTranspose2d, 3: ConvTranspose3d}
TORCH_CLASSES = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}

# (in, out, spatial, constructor arguments after the channels)
GEOMETRIES = [
    (2, 3, (5,), dict(kernel_size=3)),
    (3, 4, (6,), dict(kernel_size=3, stride=3, padding=1, output_padding=2)),
    (4, 6, (5,), dict(kernel_size=4, stride=2, padding=2, output_padding=1, groups=2)),
    (2, 2, (4,), dict(kernel_size=3, padding=3, output_padding=2, dilation=3, groups=2)),
    (2, 3, (3, 4), dict(kernel_size=(3, 2), stride=2, padding=1, output_padding=1)),
    (4, 2, (3, 3), dict(kernel_size=3, stride=(2, 3), padding=(0, 2), groups=2, bias=False)),
    (2, 3, (3, 4), dict(kernel_size=2, stride=(1, 2), output_padding=1, dilation=(2, 3))),
    (3, 3, (4, 3), dict(kernel_size=(1, 3), stride=(3, 1), padding=(0, 1), groups=3)),
    (2, 2, (2, 3, 2), dict(kernel_size=2, stride=2, padding=(0, 1, 0), output_padding=1)),
    (2, 4, (2, 2, 3), dict(kernel_size=(2, 3, 2), dilation=(2, 1, 2), groups=2)),
]


def _layer(cin, cout, spatial, arguments, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return CLASSES[len(spatial)](cin, cout, **arguments, dtype=dtype, rng=rng)


def _twin(layer):
    return TORCH_CLASSES[layer.nd](**layer.config()).to(
        torch.float64 if layer.dtype == np.float64 else torch.float32
    )


@pytest.mark.parametrize("cin, cout, spatial, arguments", GEOMETRIES, ids=repr)
def test_gradients_match_finite_differences(cin, cout, spatial, arguments, rng):
    layer = _layer(cin, cout, spatial, arguments)
    assert_gradients_match_numeric(layer, rng.standard_normal((2, cin, *spatial)))


@pytest.mark.parametrize("cin, cout, spatial, arguments", GEOMETRIES, ids=repr)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch_module(cin, cout, spatial, arguments, dtype, rng):
    layer = _layer(cin, cout, spatial, arguments, dtype)
    x = rng.standard_normal((3, cin, *spatial)).astype(dtype)
    assert_matches_torch(layer, _twin(layer), x, rng)


def _random_geometry(rng):
    nd = int(rng.integers(1, 4))
    groups = int(rng.integers(1, 4))
    axes = lambda low, high: tuple(int(v) for v in rng.integers(low, high, nd))  # noqa: E731
    kernel, stride, dilation, padding = axes(1, 5), axes(1, 4), axes(1, 4), axes(0, 3)
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    spatial = axes(1, 7)
    arguments = dict(
        kernel_size=kernel, stride=stride, padding=padding, output_padding=output_padding,
        groups=groups, bias=bool(rng.integers(2)), dilation=dilation,
    )  # fmt: skip
    return groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3)), spatial, arguments


@pytest.mark.parametrize("seed", range(40))
def test_random_geometries_match_torch(seed):
    """Random shapes, strides, paddings, output paddings, dilations and groups: float64 to
    1e-10, float32 to PyTorch's float32 (tolerances in helpers)."""
    rng = np.random.default_rng(seed)
    cin, cout, spatial, arguments = _random_geometry(rng)
    for dtype in (np.float64, np.float32):
        layer = _layer(cin, cout, spatial, arguments, dtype, seed)
        if min(layer.output_shape(spatial)) < 1:  # padding eats the whole output
            with pytest.raises(ValueError, match="padding"):
                layer.forward(np.zeros((1, cin, *spatial), dtype))
            return
        x = rng.standard_normal((2, cin, *spatial)).astype(dtype)
        assert_matches_torch(layer, _twin(layer), x, rng)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_is_the_adjoint_of_conv(nd, rng):
    """<Conv(z), x> = <z, ConvT(x)> with the same kernels (no bias): the transpose."""
    conv_class = {1: Conv1d, 2: Conv2d, 3: Conv3d}[nd]
    transpose = CLASSES[nd](3, 2, 3, stride=2, padding=1, output_padding=1, bias=False,
                            dtype=np.float64, rng=rng)  # fmt: skip
    conv = conv_class(2, 3, 3, stride=2, padding=1, bias=False, dtype=np.float64, rng=rng)
    conv.params["weight"][...] = transpose.params["weight"]  # (3, 2, *k) in both
    x = rng.standard_normal((2, 3, *(4,) * nd))
    y = transpose.forward(x)
    z = rng.standard_normal(y.shape)
    assert conv.forward(z).shape == x.shape
    np.testing.assert_allclose(np.vdot(conv.forward(z), x), np.vdot(z, y), rtol=1e-12)


def test_output_size_as_pytorch(rng):
    layer = ConvTranspose2d(2, 3, 3, stride=(2, 3), padding=1, dtype=np.float64, rng=rng)
    module = _twin(layer)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(layer.params["weight"]))
        module.bias.copy_(torch.tensor(layer.params["bias"]))
    x = rng.standard_normal((2, 2, 4, 3))
    for size in [(7, 7), (8, 9), (2, 3, 8, 8)]:
        y = layer.forward(x, output_size=size)
        expected = module(torch.tensor(x), output_size=list(size)).detach().numpy()
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
        assert y.shape[2:] == tuple(size[-2:])
        assert_gradients_match_numeric(_Sized(layer, size), x)
    np.testing.assert_allclose(layer.forward(x[0], output_size=(8, 8)), y[0], atol=1e-12)
    with pytest.raises(ValueError, match=r"valid sizes range from \(7, 7\) to \(8, 9\)"):
        layer.forward(x, output_size=(9, 7))
    with pytest.raises(ValueError, match="output_size must give 2 spatial sizes"):
        layer.forward(x, output_size=(7,))


class _Sized:
    """The layer with a fixed output_size, for gradcheck (which calls forward(x))."""

    def __init__(self, layer, size):
        self.layer, self.size = layer, size
        self.params, self.grads = layer.params, layer.grads

    def train(self):
        self.layer.train()

    def forward(self, x):
        return self.layer.forward(x, output_size=self.size)

    def backward(self, dy):
        return self.layer.backward(dy)


def test_unbatched_input_matches_torch_and_a_batch_of_one(rng):
    layer = ConvTranspose3d(2, 4, 2, stride=2, padding=1, groups=2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 2, 4))
    assert_matches_torch(layer, _twin(layer), x, rng)
    assert_gradients_match_numeric(layer, x)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(y, layer.forward(x[None])[0])
    np.testing.assert_array_equal(dx, layer.backward(dy[None])[0])


def test_backward_params_fills_the_same_gradients(rng):
    layer = ConvTranspose2d(3, 2, 3, stride=2, output_padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal(layer.forward(x).shape)
    layer.backward(dy)
    expected = {key: value.copy() for key, value in layer.grads.items()}
    for value in layer.grads.values():
        value[...] = 0
    layer.backward_params(dy)
    for key, value in expected.items():
        np.testing.assert_array_equal(layer.grads[key], value)


def test_decoder_upsamples_by_the_stride_and_trains(rng):
    """The classic decoder step: kernel 4, stride 2, padding 1 doubles the size; float32.
    SGD brings it towards a teacher of the same shape."""
    from convnp.optim import SGD

    model = Sequential(ConvTranspose2d(4, 2, 4, stride=2, padding=1, rng=rng))
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    target = ConvTranspose2d(4, 2, 4, stride=2, padding=1, rng=rng).eval().forward(x)
    optimizer = SGD(model.parameters(), lr=0.005)
    losses = []
    for _ in range(20):
        y = model.forward(x)
        assert y.shape == target.shape and y.dtype == np.float32
        losses.append(float(((y - target) ** 2).sum() / 2))
        model.backward(y - target)
        optimizer.step()
    assert losses[-1] < 0.1 * losses[0]


def test_torch_default_init_bounds(rng):
    layer = ConvTranspose2d(8, 6, 3, groups=2, rng=rng)
    bound = 1 / np.sqrt(3 * 9)  # PyTorch's fan_in: weight.shape[1] · K = out/groups · K
    assert layer.params["weight"].shape == (8, 3, 3, 3)
    assert layer.params["weight"].dtype == np.float32
    for value in layer.params.values():
        assert bound * 0.7 < np.abs(value).max() <= bound


def test_bad_inputs_name_the_layer_and_shapes(rng):
    layer = ConvTranspose2d(3, 6, 3, stride=2, rng=rng)
    with pytest.raises(ValueError, match=r"ConvTranspose2d\(3, 6.*expected input \(N, 3, H, W\)"):
        layer.forward(np.zeros((8, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="expected input"):
        layer.forward(np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        layer.forward(np.zeros((1, 3, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="does not match parameter dtype"):
        layer.forward(np.zeros((1, 3, 5, 5), np.float64))
    bad = np.zeros((1, 3, 5, 5), np.float32)
    bad[0, 1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):  # scanned once, at the model's entry
        Sequential(layer).forward(bad)
    with pytest.raises(ValueError, match=r"output would have spatial shape \(-1, -1\)"):
        ConvTranspose2d(3, 6, 1, padding=1).forward(np.zeros((1, 3, 1, 1), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        ConvTranspose2d(3, 6, 3).backward(np.zeros((1, 6, 7, 7), np.float32))
    layer.forward(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"backward expected dy of shape \(1, 6, 11, 11\)"):
        layer.backward(np.zeros((1, 6, 10, 10), np.float32))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(groups=2), "groups=2 must divide in_channels=3"),
        (dict(stride=2, output_padding=2), r"output_padding \(2, 2\) must be smaller than stride"),
        (dict(output_padding=1), "must be smaller than stride"),  # stride = dilation = 1
        (dict(padding=-1), "padding and output_padding must be >= 0"),
        (dict(stride=0), "kernel_size, stride, dilation must be >= 1"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size must be an int or a sequence of 2 ints"),
    ],
)
def test_bad_constructor_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        ConvTranspose2d(3, 6, **{"kernel_size": 3, **arguments})


def test_repr_config_and_model_file_round_trip(rng, tmp_path):
    layer = ConvTranspose2d(4, 6, (3, 2), 2, (1, 0), 1, groups=2, bias=False, dilation=(1, 2))
    assert repr(layer) == (
        "ConvTranspose2d(4, 6, kernel_size=(3, 2), stride=(2, 2), padding=(1, 0), "
        "output_padding=(1, 1), dilation=(1, 2), groups=2, bias=False)"
    )
    io.save(Sequential(layer).astype(np.float64), tmp_path / "model.safetensors")
    loaded = io.load(tmp_path / "model.safetensors")
    assert loaded[0].config() == layer.config()
    np.testing.assert_array_equal(loaded[0].params["weight"], layer.params["weight"])
    x = rng.standard_normal((2, 4, 3, 4))
    np.testing.assert_array_equal(loaded.predict(x), Sequential(layer).predict(x))


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(stride=[1, 5000]), r"stride \[1, 5000\] exceeds 1024"),
        (dict(output_padding=2**20, dilation=2**21), "output_padding 1048576 exceeds 1024"),
    ],
)
def test_hostile_architectures_are_refused(config, message):
    entry = {"type": "ConvTranspose2d", "config": {"in_channels": 1, "out_channels": 2,
                                                   "kernel_size": 3, **config}}  # fmt: skip
    with pytest.raises(ValueError, match=rf"entry 0 \(ConvTranspose2d\): {message}"):
        io.check_architecture([entry])


def test_memory_estimate_keeps_the_input(rng):
    layer = ConvTranspose2d(8, 4, 4, stride=2, padding=1, rng=rng)
    estimate = layer.memory_estimate((16, 8, 14, 14))
    assert estimate.keeps_input and estimate.other_bytes == 0
    y = layer.forward(rng.standard_normal((16, 8, 14, 14)).astype(np.float32))
    layer.backward(np.ones_like(y))
    assert 0 < layer.workspace.nbytes <= estimate.workspace_bytes


def test_memory_estimate_counts_the_skewed_rows_at_stride_1(rng):
    """At stride 1 the forward (the primitive conv_transpose) sums its row blocks through
    the skewed rows of ``_conv_ops.skewed_bytes``; for one small sample they are most of
    the workspace. The estimate comes within 1% of what is held (the scratch's small
    per-role buffers are not itemised)."""
    layer = ConvTranspose2d(6, 16, 5, padding=1, rng=rng)
    estimate = layer.memory_estimate((1, 6, 10, 10))
    y = layer.forward(rng.standard_normal((1, 6, 10, 10)).astype(np.float32))
    layer.backward(np.ones_like(y))
    skewed = skewed_bytes(1, 16, (16, 16), layer.geometry, 4)  # padded output 14 + 2·1
    assert layer.workspace.nbytes > 2 * (estimate.workspace_bytes - skewed)
    assert layer.workspace.nbytes <= 1.01 * estimate.workspace_bytes
