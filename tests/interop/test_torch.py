"""PyTorch round trip: to_torch gives the same outputs, input gradients and parameter
gradients as convnp on real images (float32 and float64); from_torch maps back exactly."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from convnp import layers as L  # noqa: E402
from convnp.app import zoo  # noqa: E402
from convnp.data import load_dataset  # noqa: E402
from convnp.interop import torch as torch_interop  # noqa: E402
from convnp.layers.combine import FeatureMapCombination  # noqa: E402
from convnp.layers.dropout import Dropout, Dropout2d  # noqa: E402
from convnp.layers.local import LocallyConnected2d  # noqa: E402
from convnp.layers.normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d  # noqa: E402
from convnp.layers.rbf import EuclideanRBF  # noqa: E402
from convnp.model import Sequential  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a small shared machine torch's extra threads mostly spin (0.5 s vs 2 ms a step)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """8 real digits, standardised (zero mean, unit std), float64, with a 1% jitter.

    The background pixels are all equal, so after a convolution max pooling sees ties
    that rounding (different summation orders) breaks differently in each library, and
    the gradient goes to different cells; the jitter makes every window's maximum unique.
    """
    test = load_dataset("mnist5k").test_images[::125].astype(np.float64) / 255  # all classes
    jitter = np.random.default_rng(0).normal(0, 0.01, test.shape)
    return (test - test.mean()) / test.std() + jitter


def _images_as(shape: tuple[int, ...], images: np.ndarray) -> np.ndarray:
    """Real pixels in any (C, *spatial) layout, from the digits' flattened pixels."""
    size = int(np.prod(shape))
    flat = images.reshape(-1)
    n = min(len(images), flat.size // size)
    return np.ascontiguousarray(flat[: n * size].reshape(n, *shape))


def _close(name: str, ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape, f"{name}: {ours.shape} != torch {theirs.shape}"
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1.0)
    tight = ours.dtype == np.float64
    # float32: whole-model gradients sum thousands of terms in different orders
    rtol, atol = (1e-10, 1e-10 * scale) if tight else (1e-4, 1e-4 * scale)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=name)
    return float(np.abs(ours - theirs).max(initial=0.0))


def _convnp_layout(name: str, grad: np.ndarray, model: Sequential) -> np.ndarray:
    """torch's grouped conv weight (O, C/g, *k) as convnp's full (O, C, *k), zeros elsewhere."""
    index, key = name.split(".")
    layer = model[int(index)]
    target = layer.params[key]
    if grad.shape == target.shape:
        return grad
    groups = layer.groups
    out_per, in_per = layer.out_channels // groups, layer.in_channels // groups
    full = np.zeros_like(target)
    for g in range(groups):
        rows = slice(g * out_per, (g + 1) * out_per)
        full[rows, g * in_per : (g + 1) * in_per] = grad[rows]
    return full


def assert_same_function(model: Sequential, x: np.ndarray, seed: int = 0) -> float:
    """Forward, dx, every parameter gradient and every buffer, convnp vs to_torch(model)."""
    module = torch_interop.to_torch(model)
    y = model.forward(x)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(x.dtype)
    dx = model.backward(dy)
    x_t = torch.tensor(x, requires_grad=True)
    y_t = module(x_t)
    y_t.backward(torch.tensor(dy))
    worst = _close("forward", y, y_t.detach().numpy())
    worst = max(worst, _close("dx", dx, x_t.grad.numpy()))
    torch_grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    assert set(torch_grads) == {name for name, _, _ in model.parameters()}
    for name, _, grad in model.parameters():
        theirs = _convnp_layout(name, torch_grads[name], model)
        worst = max(worst, _close(f"grad {name}", grad, theirs))
    torch_state = module.state_dict()
    for index, layer in enumerate(model):
        for key, value in layer.buffers.items():  # running statistics after the batch
            _close(f"buffer {index}.{key}", value, torch_state[f"{index}.{key}"].numpy())
    return worst


def _rng(seed: int) -> dict:
    return {"rng": np.random.default_rng(seed)}


def _table(out_channels: int, in_channels: int, seed: int) -> np.ndarray:
    table = np.random.default_rng(seed).random((out_channels, in_channels)) < 0.5
    table[np.arange(out_channels), np.arange(out_channels) % in_channels] = True
    return table


# (id, input shape, factory): together every class in torch_interop.TO_TORCH, plus the cases
# that decide between a torch.nn module and a wrapper (tables, flips, asymmetric padding).
CASES: list[tuple[str, tuple[int, ...], Callable[[], Sequential]]] = [
    (
        "conv2d-plain-and-grouped",
        (2, 14, 14),
        lambda: Sequential(
            L.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), **_rng(0)),
            L.Conv2d(4, 6, 3, padding="same", groups=2, **_rng(1)),
            L.Conv2d(6, 6, 2, padding="valid", groups=6, bias=False, **_rng(2)),
            L.ReLU(),
        ),
    ),
    (
        "conv2d-wrapped",
        (2, 14, 14),
        lambda: Sequential(
            L.Conv2d(2, 5, 5, connection_table=_table(5, 2, 3), flip_kernel=True, **_rng(3)),
            L.Sigmoid(),
            L.Conv2d(5, 4, 4, stride=2, padding="same", **_rng(4)),  # asymmetric + stride 2
            L.Conv2d(4, 4, 3, padding=1, groups=2, flip_kernel=True, bias=False, **_rng(5)),
            L.Tanh(),
        ),
    ),
    (
        "1d-layers",
        (7, 60),
        lambda: Sequential(
            L.Conv1d(7, 5, 5, stride=2, padding=3, dilation=2, **_rng(6)),
            L.Conv1d(5, 4, 3, flip_kernel=True, **_rng(7)),
            L.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
            L.AvgPool1d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
            L.ReLU(),
            L.LPPool1d(1.5, 2, ceil_mode=True),
            BatchNorm1d(4),
            L.AdaptiveMaxPool1d(3),
            L.AdaptiveAvgPool1d(2),
            L.Flatten(),
        ),
    ),
    (
        "3d-layers",
        (1, 4, 14, 16),
        lambda: Sequential(
            L.Conv3d(1, 3, (2, 3, 3), stride=(1, 2, 2), padding=(1, 1, 0), **_rng(8)),
            BatchNorm3d(3, momentum=0.3),
            L.MaxPool3d(2, ceil_mode=True),
            L.AvgPool3d((1, 2, 2), padding=(0, 1, 1), divisor_override=3),
            L.LPPool3d(2, (2, 2, 2), ceil_mode=True),
            L.AdaptiveAvgPool3d((1, 2, 3)),
            L.AdaptiveMaxPool3d(1),
        ),
    ),
    (
        "2d-pools",
        (1, 28, 28),
        lambda: Sequential(
            L.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
            L.MaxPool2d((3, 2), stride=2, padding=(1, 0), ceil_mode=True),
            L.WeightedAvgPool2d(3, stride=2, padding=1, ceil_mode=True, sigma=0.8),
            L.LPPool2d(2, 2),
            L.AdaptiveAvgPool2d((None, 3)),
            L.AdaptiveMaxPool2d((2, 1)),
        ),
    ),
    (
        "bouvrie-style",
        (1, 28, 28),
        lambda: Sequential(
            L.Conv2d(1, 4, 5, flip_kernel=True, **_rng(9)),
            L.Sigmoid(),
            L.Subsample2d(4, 2),
            L.Subsample2d(4, (3, 2)),
            L.GlobalAvgPool2d(),
            L.Flatten(),
        ),
    ),
    (
        "global-max-dropout2d-bn2d",
        (3, 12, 12),
        lambda: Sequential(
            BatchNorm2d(3, affine=False),
            Dropout2d(0.0),
            L.GlobalMaxPool2d(),
            L.Flatten(start_dim=2),
        ),
    ),
    (
        "feature-map-combinations",
        (3, 14, 14),
        lambda: Sequential(
            FeatureMapCombination(3, 5, (3, 2), padding="same", flip_kernel=True, **_rng(10)),
            L.Tanh(),
            FeatureMapCombination(
                5,
                4,
                3,
                stride=2,
                dilation=(1, 2),
                kernels="per_input",
                penalty="entropy",
                penalty_weight=0.1,
                **_rng(11),
            ),
        ),
    ),
    (
        "locally-connected",
        (2, 14, 14),
        lambda: Sequential(
            LocallyConnected2d(2, 3, 14, (3, 2), stride=(2, 1), padding=1, **_rng(12)),
            L.ReLU(),
            LocallyConnected2d(3, 2, (7, 15), 4, stride=2, padding="same", bias=False, **_rng(13)),
        ),
    ),
    (
        "upsample",
        (2, 5, 6),
        lambda: Sequential(
            L.Upsample(scale_factor=2),
            L.Upsample(size=(7, 9)),
            L.Upsample(scale_factor=(1.5, 0.5), mode="bilinear"),
            L.Upsample(size=(8, 5), mode="bilinear", align_corners=True),
            L.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
        ),
    ),
    (
        "dense-activations-rbf",
        (1, 28, 28),
        lambda: Sequential(
            L.Flatten(),
            L.Linear(784, 32, **_rng(14)),
            L.LeakyReLU(0.2),
            Dropout(0.0),
            BatchNorm1d(32, eps=1e-3),
            BatchNorm1d(32, momentum=None, bias=False),
            L.ELU(0.7),
            L.Linear(32, 16, bias=False, **_rng(15)),
            L.GELU(),
            L.GELU("tanh"),
            L.Linear(16, 12, **_rng(16)),
            L.ScaledTanh(),
            EuclideanRBF(12, 10, **_rng(17)),
            L.Softmax(),
        ),
    ),
]


def _randomise(model: Sequential, seed: int) -> Sequential:
    """Move constant-initialised state (β, γ, α logits, running stats) to random values."""
    rng = np.random.default_rng(seed)
    for layer in model:
        for key, value in (*layer.params.items(), *layer.buffers.items()):
            if key in ("beta", "running_var") or (key in ("weight", "bias") and value.ndim == 1):
                value[...] = rng.uniform(0.5, 1.5, value.shape)
            elif key in ("running_mean", "alpha_logits"):
                value[...] = rng.normal(0, 1, value.shape)
    return model


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, factory", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_layers_match_torch_outputs_and_gradients(shape, factory, dtype, images) -> None:
    model = _randomise(factory(), 1).astype(dtype)
    assert_same_function(model, _images_as(shape, images).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(zoo.RECIPES))
def test_built_in_models_match_torch(name: str, dtype, images) -> None:
    model = _randomise(zoo.get_recipe(name).build(rng=np.random.default_rng(2)), 3)
    for layer in model:
        if isinstance(layer, (L.Dropout, L.Dropout2d)):
            layer.p = 0.0  # each library draws its own masks; p = 0 keeps training mode exact
    assert_same_function(model.astype(dtype), images.astype(dtype))


def test_every_layer_has_a_case() -> None:
    covered = {type(layer) for _, _, factory in CASES for layer in factory()}
    assert set(torch_interop.TO_TORCH) <= covered, set(torch_interop.TO_TORCH) - covered


@pytest.mark.parametrize("shape, factory", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_round_trip_restores_the_model(shape, factory) -> None:
    model = _randomise(factory(), 4)
    back = torch_interop.from_torch(torch_interop.to_torch(model))
    assert len(back) == len(model)
    renamed = {L.GlobalAvgPool2d: L.AdaptiveAvgPool2d, L.GlobalMaxPool2d: L.AdaptiveMaxPool2d}
    for ours, theirs in zip(model, back):
        assert type(theirs) is renamed.get(type(ours), type(ours))
        if type(theirs) is type(ours):
            assert theirs.config() == ours.config()
        assert theirs.regularizers.__repr__() == ours.regularizers.__repr__()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value, err_msg=key)
    assert back.dtype == model.dtype


def test_conv_configs_survive_where_torch_can_say_them() -> None:
    model = Sequential(
        L.Conv2d(2, 4, 3, padding="same", groups=2),
        L.Conv2d(4, 4, 3, padding="full", connection_table=_table(4, 4, 0), flip_kernel=True),
    )
    module = torch_interop.to_torch(model)
    assert type(module[0]) is nn.Conv2d and module[0].padding == "same"
    assert type(module[1]) is torch_interop.ConvNd
    back = torch_interop.from_torch(module)
    assert back[0].config() == model[0].config()
    assert back[1].config() == model[1].config()


def test_modes_and_dtype_carry_over(images) -> None:
    model = zoo.get_recipe("lenet5").build(dtype=np.float64, rng=np.random.default_rng(5))
    module = torch_interop.to_torch(model.eval())
    assert not module.training
    assert all(p.dtype == torch.float64 for p in module.parameters())
    back = torch_interop.from_torch(module)
    assert not back.training and back.dtype == np.float64
    assert torch_interop.from_torch(module.train()).training


def test_dropout_models_agree_in_eval_mode(images) -> None:
    model = Sequential(L.Flatten(), L.Linear(784, 20, **_rng(6)), Dropout(0.5), L.ReLU())
    module = torch_interop.to_torch(model.eval())
    x = images[:8].astype(np.float32)
    np.testing.assert_allclose(
        module(torch.from_numpy(x)).detach().numpy(), model.predict(x), rtol=1e-5, atol=1e-6
    )


def test_fine_tune_in_torch_then_continue_in_convnp(images) -> None:
    labels = load_dataset("mnist5k").test_labels[::125]
    model = zoo.get_recipe("lenet5").build(rng=np.random.default_rng(7))
    module = torch_interop.to_torch(model)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    x = torch.from_numpy(images.astype(np.float32))
    target = torch.from_numpy(labels.astype(np.int64))
    before = nn.functional.cross_entropy(module(x), target).item()
    for _ in range(3):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(module(x), target)
        loss.backward()
        optimizer.step()
    tuned = torch_interop.from_torch(module.eval())
    expected = module(x).detach().numpy()
    np.testing.assert_allclose(tuned.predict(images.astype(np.float32)), expected, atol=1e-5)
    assert nn.functional.cross_entropy(torch.from_numpy(expected), target).item() < before


def test_from_torch_reads_a_torch_built_model(images) -> None:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding="same"), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Conv2d(4, 8, 3, stride=2, groups=4),
        nn.GELU(approximate="tanh"),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    ).double()
    model = torch_interop.from_torch(module)
    assert [type(layer).__name__ for layer in model] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "GELU",
        "MaxPool2d",
        "Flatten",
        "Linear",
    ]
    x = images[:8]
    x_t = torch.tensor(x, requires_grad=True)
    y_t = module(x_t)
    y = model.forward(x)
    dy = np.random.default_rng(8).standard_normal(y.shape)
    y_t.backward(torch.from_numpy(dy))
    _close("forward", y, y_t.detach().numpy())
    _close("dx", model.backward(dy), x_t.grad.numpy())
    torch_grads = [p.grad.numpy() for p in module.parameters()]  # same order as ours
    ours = list(model.parameters())
    assert len(ours) == len(torch_grads)
    for (name, _, grad), theirs in zip(ours, torch_grads):
        _close(f"grad {name}", grad, _convnp_layout(name, theirs, model))
    assert model[3].params["weight"].shape == (8, 4, 3, 3)  # grouped: full, masked


@pytest.mark.parametrize(
    "module, message",
    [
        (nn.Identity(), "no convnp counterpart"),
        (nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), "zeros only"),
        (nn.Softmax(), "dim=None"),
        (nn.MaxPool2d(2, return_indices=True), "return_indices"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, nn.Module) else "",
)
def test_from_torch_refuses_with_the_module_named(module, message) -> None:
    with pytest.raises(ValueError, match=rf"module 1 \(.*{message}"):
        torch_interop.from_torch(nn.Sequential(nn.ReLU(), module))


def test_half_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="float32 or float64"):
        torch_interop.from_torch(nn.Sequential(nn.Linear(2, 2).half()))


def test_to_torch_refuses_unknown_layers() -> None:
    class Custom(L.ReLU):
        pass

    with pytest.raises(ValueError, match=r"layer 0 \(Custom\(\)\) has no torch counterpart"):
        torch_interop.to_torch(Sequential(Custom()))


def test_wrappers_copy_rather_than_share_memory() -> None:
    model = Sequential(L.Subsample2d(2, 2), L.Conv2d(2, 2, 3, flip_kernel=True))
    module = torch_interop.to_torch(model)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(1.0)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
