"""Conv1d/2d/3d: finite differences, PyTorch parity, behaviour (DESIGN 3.6)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp import Sequential, io
from convnp.layers import Conv1d, Conv2d, Conv3d

# (batch, in, out, spatial, kernel, stride, padding, dilation)
SHAPES_2D = [
    (1, 1, 1, (5, 5), 3, 1, 0, 1),
    (2, 3, 4, (7, 6), (3, 2), (2, 1), (1, 2), 1),
    (3, 2, 5, (9, 8), 3, 2, 1, 2),
    (2, 4, 3, (6, 5), (1, 3), 1, "same", 1),
    (1, 2, 2, (4, 5), 3, 1, "full", 1),
    (2, 3, 2, (8, 8), 5, 3, 2, 1),
]


def _conv2d(batch, cin, cout, spatial, kernel, stride, padding, dilation, rng, **kwargs):
    layer = Conv2d(
        cin, cout, kernel, stride, padding, dilation, dtype=np.float64, rng=rng, **kwargs
    )
    x = rng.standard_normal((batch, cin, *spatial))
    return layer, x


def _torch_padding(layer):
    """Our (before, after) pads as torch.nn.functional.pad's argument (last axis first)."""
    return [p for before_after in reversed(layer.pads) for p in before_after]


def _torch_twin(layer):
    """conv over explicitly padded input, with our mask and flip built from torch primitives."""
    torch = pytest.importorskip("torch")
    conv = {
        1: torch.nn.functional.conv1d,
        2: torch.nn.functional.conv2d,
        3: torch.nn.functional.conv3d,
    }
    nd = layer.nd
    mask = torch.tensor(
        layer.connection_mask.reshape(layer.connection_mask.shape + (1,) * nd), dtype=torch.float64
    )

    def twin(x, params):
        weight = params["weight"] * mask.to(x.dtype)
        if layer.flip_kernel:
            weight = torch.flip(weight, dims=tuple(range(2, 2 + nd)))
        padded = torch.nn.functional.pad(x, _torch_padding(layer))
        return conv[nd](
            padded, weight, params.get("bias"), stride=layer.stride, dilation=layer.dilation
        )

    return twin


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("flip_kernel", [False, True])
def test_conv2d_gradients_match_finite_differences(shape, flip_kernel, rng):
    layer, x = _conv2d(*shape, rng, flip_kernel=flip_kernel)
    assert_gradients_match_numeric(layer, x)


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_matches_torch_module(shape, dtype, rng):
    torch = pytest.importorskip("torch")
    batch, cin, cout, spatial, kernel, stride, padding, dilation = shape
    layer = Conv2d(cin, cout, kernel, stride, padding, dilation, dtype=dtype, rng=rng)
    if isinstance(padding, str) and padding == "full":
        twin = _torch_twin(layer)  # torch has no 'full' mode
    else:
        twin = torch.nn.Conv2d(cin, cout, kernel, stride, padding, dilation)
    x = rng.standard_normal((batch, cin, *spatial)).astype(dtype)
    assert_matches_torch(layer, twin, x, rng)


def test_connection_table_gradients_and_torch_twin(rng):
    table = rng.random((5, 4)) < 0.5
    table[:, 0] = True
    layer, x = _conv2d(2, 4, 5, (7, 7), 3, 1, 1, 1, rng, connection_table=table)
    assert_gradients_match_numeric(layer, x)
    assert_matches_torch(layer, _torch_twin(layer), x, rng)
    unconnected = ~table
    assert np.all(layer.params["weight"][unconnected] == 0)
    assert np.all(layer.grads["weight"][unconnected] == 0)


def test_unconnected_kernels_stay_zero_through_training(rng):
    from convnp.model import Sequential
    from convnp.optim import SGD

    table = np.eye(3, dtype=bool)
    model = Sequential(Conv2d(3, 3, 3, connection_table=table, rng=rng))
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        y = model.forward(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
        model.backward(np.ones_like(y))
        optimizer.step()
    weight = model[0].params["weight"]
    assert np.all(weight[~table] == 0)
    assert np.all(np.abs(weight[table]).sum(axis=(-1, -2)) > 0)


def test_groups_is_a_block_connection_table_and_matches_torch(rng):
    torch = pytest.importorskip("torch")
    layer = Conv2d(4, 6, 3, padding=1, groups=2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 4, 5, 5))
    assert_gradients_match_numeric(layer, x)
    twin = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
    y = layer.forward(x)
    # only the in-group slice of each kernel is stored, as torch stores it: (6, 2, 3, 3)
    assert layer.params["weight"].shape == twin.weight.shape == (6, 2, 3, 3)
    with torch.no_grad():
        twin.weight.copy_(torch.tensor(layer.params["weight"]))
        twin.bias.copy_(torch.tensor(layer.params["bias"]))
        expected = twin(torch.tensor(x)).numpy()
    np.testing.assert_allclose(y, expected, atol=1e-12)


def test_flip_kernel_is_true_convolution_and_differs_by_rot180(rng):
    """Conv with flip equals cross-correlation with the rot180 kernel (SPEC §2)."""
    flipped = Conv2d(2, 3, (3, 2), flip_kernel=True, dtype=np.float64, rng=rng)
    plain = Conv2d(2, 3, (3, 2), dtype=np.float64, rng=rng)
    plain.params["weight"][...] = flipped.params["weight"][..., ::-1, ::-1]
    plain.params["bias"][...] = flipped.params["bias"]
    x = rng.standard_normal((2, 2, 6, 5))
    np.testing.assert_allclose(flipped.forward(x), plain.forward(x), atol=1e-12)
    # true convolution of an impulse reproduces the kernel itself (MATLAB conv2 'full')
    impulse = np.zeros((1, 1, 3, 3))
    impulse[0, 0, 1, 1] = 1.0
    conv = Conv2d(1, 1, 3, padding=1, bias=False, flip_kernel=True, dtype=np.float64, rng=rng)
    np.testing.assert_allclose(conv.forward(impulse)[0, 0], conv.params["weight"][0, 0])


@pytest.mark.parametrize(
    "cls,spatial,kernel,stride,padding,dilation",
    [
        (Conv1d, (11,), 3, 2, 1, 2),
        (Conv1d, (6,), 4, 1, "same", 1),
        (Conv3d, (5, 4, 6), (2, 3, 2), (1, 2, 1), (1, 0, 1), 1),
        (Conv3d, (4, 4, 4), 3, 1, "same", 1),
    ],
)
def test_conv1d_conv3d_gradients_and_torch(cls, spatial, kernel, stride, padding, dilation, rng):
    torch = pytest.importorskip("torch")
    layer = cls(2, 3, kernel, stride, padding, dilation, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 2, *spatial))
    assert_gradients_match_numeric(layer, x)
    twin = {Conv1d: torch.nn.Conv1d, Conv3d: torch.nn.Conv3d}[cls](
        2, 3, kernel, stride, padding, dilation
    )
    assert_matches_torch(layer, twin, x, rng)
    assert_matches_torch(layer.astype(np.float32), twin, x.astype(np.float32), rng)


def test_translation_equivariance(rng):
    """Shifting the input shifts the output by the same amount away from borders (SPEC §2)."""
    layer = Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((1, 2, 12, 12))
    shifted = np.roll(x, shift=(2, 1), axis=(2, 3))
    y = layer.forward(x)
    y_shifted = layer.forward(shifted)
    np.testing.assert_allclose(y_shifted[:, :, 3:-1, 2:-1], y[:, :, 1:-3, 1:-2], atol=1e-12)
    assert not np.allclose(y_shifted, y)


def test_torch_default_init_bounds(rng):
    layer = Conv2d(4, 8, 3, rng=rng)
    bound = 1 / np.sqrt(4 * 9)
    assert layer.params["weight"].dtype == np.float32
    assert np.abs(layer.params["weight"]).max() <= bound
    assert np.abs(layer.params["weight"]).max() > 0.8 * bound


def test_bad_inputs_name_the_layer_and_shapes(rng):
    layer = Conv2d(3, 6, 5, rng=rng)
    with pytest.raises(
        ValueError, match=r"Conv2d\(3, 6.*expected input \(N, 3, H, W\).*\(8, 1, 28, 28\)"
    ):
        layer.forward(np.zeros((8, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match="expected input"):
        layer.forward(np.zeros((28, 28), np.float32))  # (3, 28, 28) is one sample
    with pytest.raises(ValueError, match="floating-point"):
        layer.forward(np.zeros((1, 3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="does not match parameter dtype"):
        layer.forward(np.zeros((1, 3, 28, 28), np.float64))
    bad = np.zeros((1, 3, 8, 8), np.float32)
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):  # scanned once, at the model's entry
        Sequential(layer).forward(bad)
    with pytest.raises(ValueError, match="larger than the padded input"):
        layer.forward(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"connection_table must have shape.*\(6, 3\)"):
        Conv2d(3, 6, 5, connection_table=np.ones((3, 6), bool))
    with pytest.raises(ValueError, match="padding must be"):
        Conv2d(3, 6, 5, padding="wide")
    with pytest.raises(ValueError, match="groups"):
        Conv2d(3, 6, 5, groups=2)


def test_backward_before_forward_and_no_grad(rng):
    layer = Conv2d(1, 2, 3, rng=rng)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((1, 2, 3, 3), np.float32))
    with layer.no_grad():
        layer.forward(np.zeros((1, 1, 5, 5), np.float32))
    assert layer._cache is None
    with pytest.raises(RuntimeError):
        layer.backward(np.zeros((1, 2, 3, 3), np.float32))
    layer.forward(np.zeros((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"backward expected dy of shape \(1, 2, 3, 3\)"):
        layer.backward(np.zeros((1, 2, 4, 4), np.float32))


def test_repr_and_config_round_trip(rng):
    table = np.ones((4, 2), bool)
    layer = Conv2d(2, 4, (3, 5), stride=2, padding="same", connection_table=table, flip_kernel=True)
    text = repr(layer)
    assert text.startswith("Conv2d(2, 4, kernel_size=(3, 5), stride=(2, 2), padding='same'")
    assert "flip_kernel=True" in text
    rebuilt = Conv2d(**layer.config())
    assert rebuilt.config() == layer.config()
    assert rebuilt.params["weight"].shape == (4, 2, 3, 5)


def test_float32_stays_float32_and_matches_float64(rng):
    layer64 = Conv2d(3, 4, 3, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 8, 8))
    y64 = layer64.forward(x)
    dx64 = layer64.backward(np.ones_like(y64))
    layer32 = layer64.astype(np.float32)
    y32 = layer32.forward(x.astype(np.float32))
    dx32 = layer32.backward(np.ones_like(y32))
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    assert layer32.grads["weight"].dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=1e-4)
    np.testing.assert_allclose(dx32, dx64, atol=1e-4)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "cls,spatial,kernel,stride,padding,dilation",
    [
        (Conv1d, (9,), 3, 2, 2, 2),
        (Conv2d, (5, 7), (3, 2), (2, 1), (2, 1), (1, 2)),
        (Conv2d, (6, 5), 3, 1, "same", 1),
        (Conv3d, (4, 5, 3), (2, 3, 2), (1, 2, 1), (1, 2, 2), (2, 1, 1)),
    ],
)
def test_padding_modes_gradients_and_torch(
    padding_mode, cls, spatial, kernel, stride, padding, dilation, rng
):
    """reflect / replicate / circular: finite differences and PyTorch's padding_mode."""
    torch = pytest.importorskip("torch")
    args = (2, 3, kernel, stride, padding, dilation)
    layer = cls(*args, padding_mode=padding_mode, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 2, *spatial))
    assert_gradients_match_numeric(layer, x)
    twin_type = {Conv1d: torch.nn.Conv1d, Conv2d: torch.nn.Conv2d, Conv3d: torch.nn.Conv3d}[cls]
    twin = twin_type(*args, padding_mode=padding_mode)
    assert_matches_torch(layer, twin, x, rng)
    assert_matches_torch(layer.astype(np.float32), twin, x.astype(np.float32), rng)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_mode_with_flip_kernel_and_table_matches_plain_pad(padding_mode, rng):
    """The mode pads x before any kernel variant: the same as np.pad then padding=0."""
    table = rng.random((3, 2)) < 0.7
    kwargs = {"connection_table": table, "flip_kernel": True, "dtype": np.float64}
    layer = Conv2d(2, 3, 3, padding=(1, 2), padding_mode=padding_mode, rng=rng, **kwargs)
    plain = Conv2d(2, 3, 3, rng=rng, **kwargs)
    plain.params["weight"][...] = layer.params["weight"]
    plain.params["bias"][...] = layer.params["bias"]
    x = rng.standard_normal((2, 2, 4, 5))
    numpy_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[padding_mode]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)), mode=numpy_mode)
    np.testing.assert_allclose(layer.forward(x), plain.forward(padded), rtol=1e-12)
    assert_gradients_match_numeric(layer, x)


def test_padding_mode_errors_and_config(rng, tmp_path):
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        Conv2d(1, 1, 3, padding=1, padding_mode="mirror")
    layer = Conv1d(1, 1, 3, padding=4, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"padding_mode='reflect': padding \(4, 4\).*size 4"):
        layer.forward(np.zeros((1, 1, 4), np.float32))
    layer = Conv1d(1, 1, 3, padding=5, padding_mode="circular")
    with pytest.raises(ValueError, match="must be at most its size 4"):
        layer.forward(np.zeros((1, 1, 4), np.float32))
    layer = Conv2d(2, 3, 3, padding=1, padding_mode="replicate", rng=rng)
    assert "padding_mode='replicate'" in repr(layer)
    assert Conv2d(**layer.config()).config() == layer.config()
    io.save(Sequential(layer), tmp_path / "model.npz")
    (loaded,) = io.load(tmp_path / "model.npz")
    assert loaded.padding_mode == "replicate" and loaded.config() == layer.config()


def test_padding_mode_memory_estimate_counts_the_padded_copy():
    estimate = Conv2d(2, 3, 3, padding=(1, 2), padding_mode="circular").memory_estimate(
        (4, 2, 5, 6)
    )
    assert not estimate.keeps_input
    assert estimate.other_bytes == 4 * 2 * 7 * 10 * 4  # x̃, float32
