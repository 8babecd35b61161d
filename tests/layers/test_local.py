"""LocallyConnected2d: finite differences, a torch twin (unfold + einsum), behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp import io
from convnp.layers import Conv2d, LocallyConnected2d
from convnp.layers._conv_ops import Workspace
from convnp.model import Sequential

# (batch, in, out, input size, kernel, stride, padding)
SHAPES = [
    (1, 1, 1, (5, 5), 3, 1, 0),
    (2, 3, 4, (7, 6), (3, 2), (2, 1), (1, 2)),
    (3, 2, 2, (6, 5), 3, 2, "same"),
    (2, 2, 3, (4, 5), (2, 3), 1, "full"),
    (1, 3, 2, (9, 8), 4, 3, 1),
]


def _layer(batch, cin, cout, size, kernel, stride, padding, rng, dtype=np.float64):
    layer = LocallyConnected2d(cin, cout, size, kernel, stride, padding, dtype=dtype, rng=rng)
    x = rng.standard_normal((batch, cin, *size)).astype(dtype)
    return layer, x


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_finite_differences(shape, rng):
    layer, x = _layer(*shape, rng)
    assert_gradients_match_numeric(layer, x)


def _torch_twin(layer):
    """unfold gathers the patches (N, C·K, L); an einsum applies each position's kernels."""
    torch = pytest.importorskip("torch")
    pads = [p for before_after in reversed(layer.pads) for p in before_after]
    positions = layer.output_size[0] * layer.output_size[1]

    def twin(x, params):
        padded = torch.nn.functional.pad(x, pads)
        cols = torch.nn.functional.unfold(padded, layer.kernel_size, stride=layer.stride)
        kernels = params["weight"].reshape(positions, layer.out_channels, -1)
        y = torch.einsum("nkl,lok->nol", cols, kernels)
        y = y + params["bias"].reshape(layer.out_channels, positions)
        return y.reshape(x.shape[0], layer.out_channels, *layer.output_size)

    return twin


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch_twin(shape, dtype, rng):
    layer, x = _layer(*shape, rng, dtype=dtype)
    assert_matches_torch(layer, _torch_twin(layer), x, rng)


def test_equals_a_convolution_when_every_position_shares_the_kernel(rng):
    """Same connectivity as Conv2d; sharing the kernels gives exactly the conv (SPEC §6)."""
    local = LocallyConnected2d(2, 3, (7, 6), 3, 2, 1, dtype=np.float64, rng=rng)
    conv = Conv2d(2, 3, 3, 2, 1, dtype=np.float64, rng=rng)
    local.params["weight"][...] = conv.params["weight"]
    local.params["bias"][...] = conv.params["bias"][:, None, None]
    x = rng.standard_normal((2, 2, 7, 6))
    np.testing.assert_allclose(local.forward(x), conv.forward(x), atol=1e-12)
    dy = rng.standard_normal(conv.forward(x).shape)
    np.testing.assert_allclose(local.backward(dy), conv.backward(dy), atol=1e-12)
    np.testing.assert_allclose(
        local.grads["weight"].sum(axis=(0, 1)), conv.grads["weight"], atol=1e-12
    )


def test_weights_are_not_shared(rng):
    """Changing the kernel of one output position changes only that position's output."""
    layer = LocallyConnected2d(1, 2, 6, 3, dtype=np.float64, rng=rng)
    x = rng.standard_normal((1, 1, 6, 6))
    before = layer.forward(x)
    layer.params["weight"][1, 2] += 1.0
    changed = layer.forward(x) != before
    assert changed[0, :, 1, 2].all()
    changed[0, :, 1, 2] = False
    assert not changed.any()
    assert layer.num_parameters() == 4 * 4 * 2 * 9 + 2 * 4 * 4


def test_default_init_bounds(rng):
    layer = LocallyConnected2d(3, 4, 8, 3, rng=rng)
    bound = 1 / np.sqrt(3 * 9)
    assert layer.params["weight"].dtype == np.float32
    assert layer.params["weight"].shape == (6, 6, 4, 3, 3, 3)
    assert layer.params["bias"].shape == (4, 6, 6)
    assert bound * 0.9 < np.abs(layer.params["weight"]).max() <= bound


def test_errors_name_the_layer_and_shapes(rng):
    layer = LocallyConnected2d(3, 4, (8, 9), 3, rng=rng)
    with pytest.raises(ValueError, match=r"fixed input size.*\(2, 3, 8, 8\)"):
        layer.forward(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"expected input \(N, 3, 8, 9\).*\(2, 1, 8, 9\)"):
        layer.forward(np.zeros((2, 1, 8, 9), np.float32))
    with pytest.raises(ValueError, match="does not match parameter dtype"):
        layer.forward(np.zeros((2, 3, 8, 9)))
    with pytest.raises(ValueError, match="larger than the padded input"):
        LocallyConnected2d(1, 1, 2, 3)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((2, 4, 6, 7), np.float32))
    layer.forward(np.zeros((2, 3, 8, 9), np.float32))
    with pytest.raises(ValueError, match=r"backward expected dy of shape \(2, 4, 6, 7\)"):
        layer.backward(np.zeros((2, 4, 7, 6), np.float32))


def test_no_grad_keeps_nothing_and_float32_stays_float32(rng):
    layer = LocallyConnected2d(2, 2, 5, 3, rng=rng)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32 and layer.backward(y).dtype == np.float32
    with layer.no_grad():
        layer.forward(x)
    assert layer._cache is None


def test_repr_config_and_model_file_round_trip(rng, tmp_path):
    layer = LocallyConnected2d(2, 3, (6, 7), (3, 2), stride=2, padding=1, bias=False, rng=rng)
    assert repr(layer) == (
        "LocallyConnected2d(2, 3, input_size=(6, 7), kernel_size=(3, 2), stride=(2, 2), "
        "padding=(1, 1), bias=False)"
    )
    model = Sequential(layer)
    io.save(model, tmp_path / "local.safetensors")
    loaded = io.load(tmp_path / "local.safetensors")
    assert loaded[0].config() == layer.config()
    np.testing.assert_array_equal(loaded[0].params["weight"], layer.params["weight"])


def test_backward_params_fills_the_same_gradients_without_dx(rng):
    """As the first layer of a network, only ∂E/∂k and ∂E/∂b are needed."""
    layer, x = _layer(2, 2, 3, (6, 5), 3, 2, 1, rng)
    dy = rng.standard_normal(layer.forward(x).shape)
    layer.backward(dy)
    expected = {key: grad.copy() for key, grad in layer.grads.items()}
    for grad in layer.grads.values():
        grad[...] = 0
    assert layer.backward_params(dy) is None
    for key, grad in layer.grads.items():
        np.testing.assert_array_equal(grad, expected[key])


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_blocks_of_samples_equal_one_pass(shape, rng):
    """A workspace that holds two samples' patches (blocks 2, 2, 1 of 5) gives the one-pass
    output and gradients in float64 at 1e-12."""
    _, cin, cout, size, kernel, stride, padding = shape
    layer, x = _layer(5, cin, cout, size, kernel, stride, padding, rng)
    dy = rng.standard_normal((5, cout, *layer.output_size))
    results = []
    for limit in (2**30, 2 * layer._bytes_per_sample(x.itemsize)):
        layer.workspace = Workspace(limit)
        results.append((layer.forward(x), layer.backward(dy), layer.grads["weight"].copy()))
    assert len(layer._sample_blocks(5, x.itemsize)) == 3
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
