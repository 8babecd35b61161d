"""PyTorch round trip: to_torch gives the same outputs, input gradients and parameter
gradients as convnp on real images (float32 and float64); from_torch maps back exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sample_networks import NETWORKS, connection_table, images_as, randomise_state, seeded  # noqa: E402
from torch import nn  # noqa: E402

from convnp import layers as L  # noqa: E402
from convnp.app import zoo  # noqa: E402
from convnp.data import load_dataset  # noqa: E402
from convnp.interop import torch as torch_interop  # noqa: E402
from convnp.layers.dropout import Dropout  # noqa: E402
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


def _close(name: str, ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape, f"{name}: {ours.shape} != torch {theirs.shape}"
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1.0)
    tight = ours.dtype == np.float64
    # float32: whole-model gradients sum thousands of terms in different orders
    rtol, atol = (1e-10, 1e-10 * scale) if tight else (1e-4, 1e-4 * scale)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=name)
    return float(np.abs(ours - theirs).max(initial=0.0))


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
        worst = max(worst, _close(f"grad {name}", grad, torch_grads[name]))
    torch_state = module.state_dict()
    for index, layer in enumerate(model):
        for key, value in layer.buffers.items():  # running statistics after the batch
            _close(f"buffer {index}.{key}", value, torch_state[f"{index}.{key}"].numpy())
    return worst


CASES = NETWORKS  # every sample network converts


def _without_dropout(model: Sequential) -> Sequential:
    """Dropout probabilities set to 0: each library draws its own masks, and p = 0 keeps the
    training-mode comparison exact (eval-mode dropout is tested on its own below)."""
    for layer in model:
        if isinstance(layer, (L.Dropout, L.Dropout2d)):
            layer.p = 0.0
    return model


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, factory", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_layers_match_torch_outputs_and_gradients(shape, factory, dtype, images) -> None:
    model = _without_dropout(randomise_state(factory(), 1)).astype(dtype)
    assert_same_function(model, images_as(shape, images).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(zoo.RECIPES))
def test_built_in_models_match_torch(name: str, dtype, images) -> None:
    model = randomise_state(zoo.get_recipe(name).build(rng=np.random.default_rng(2)), 3)
    assert_same_function(_without_dropout(model).astype(dtype), images.astype(dtype))


def test_every_layer_has_a_case() -> None:
    covered = {type(layer) for _, _, factory in CASES for layer in factory()}
    assert set(torch_interop.TO_TORCH) <= covered, set(torch_interop.TO_TORCH) - covered


@pytest.mark.parametrize("shape, factory", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_round_trip_restores_the_model(shape, factory) -> None:
    model = randomise_state(factory(), 4)
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
        L.Conv2d(
            4, 4, 3, padding="full", connection_table=connection_table(4, 4, 0), flip_kernel=True
        ),
    )
    module = torch_interop.to_torch(model)
    assert type(module[0]) is nn.Conv2d and module[0].padding == "same"
    assert type(module[1]) is torch_interop.ConvNd
    back = torch_interop.from_torch(module)
    assert back[0].config() == model[0].config()
    assert back[1].config() == model[1].config()


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_modes_carry_over_both_ways(padding_mode, images) -> None:
    """nn.ConvNd's padding_mode where torch can say the layer, F.pad's mode in ConvNd."""
    model = Sequential(
        L.Conv2d(1, 4, 5, stride=2, padding=2, padding_mode=padding_mode),
        L.Conv2d(4, 3, 3, padding=(1, 2), padding_mode=padding_mode, flip_kernel=True),
        L.Conv2d(3, 2, 3, stride=2, padding="same", padding_mode=padding_mode),
    )
    model = randomise_state(model, 6).astype(np.float64)
    module = torch_interop.to_torch(model)
    assert type(module[0]) is nn.Conv2d and module[0].padding_mode == padding_mode
    assert type(module[1]) is torch_interop.ConvNd
    assert_same_function(model, images)
    back = torch_interop.from_torch(module)
    assert [layer.config() for layer in back[:2]] == [layer.config() for layer in model[:2]]
    assert back[2].pads == model[2].pads  # strided "same": torch says it as numbers
    assert back[2].padding_mode == padding_mode


def test_modes_and_dtype_carry_over(images) -> None:
    model = zoo.get_recipe("lenet5").build(dtype=np.float64, rng=np.random.default_rng(5))
    module = torch_interop.to_torch(model.eval())
    assert not module.training
    assert all(p.dtype == torch.float64 for p in module.parameters())
    back = torch_interop.from_torch(module)
    assert not back.training and back.dtype == np.float64
    assert torch_interop.from_torch(module.train()).training


def test_dropout_models_agree_in_eval_mode(images) -> None:
    model = Sequential(L.Flatten(), L.Linear(784, 20, **seeded(6)), Dropout(0.5), L.ReLU())
    module = torch_interop.to_torch(model.eval())
    x = images[:8].astype(np.float32)
    np.testing.assert_allclose(
        module(torch.from_numpy(x)).detach().numpy(), model.predict(x), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("shape, factory", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_eval_mode_backward_matches_torch(shape, factory, images) -> None:
    """Backward after an eval-mode forward (running statistics, dropout the identity), as
    for saliency maps and input gradients: every sample network, float64."""
    model = randomise_state(factory(), 1).astype(np.float64).eval()
    assert_same_function(model, images_as(shape, images))


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
        _close(f"grad {name}", grad, theirs)
    assert model[3].params["weight"].shape == (8, 1, 3, 3)  # grouped: torch's layout


@pytest.mark.parametrize(
    "module, message",
    [
        (nn.Identity(), "no convnp counterpart"),
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
