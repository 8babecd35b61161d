"""FeatureMapCombination and the α penalties (SPEC §4): finite differences, a PyTorch
autograd twin, the printed L1 penalty's zero gradient, working sparsity, behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp import io
from convnp.gradcheck import numerical_gradient, relative_error
from convnp.layers import FeatureMapCombination, Flatten, Linear
from convnp.layers.base import Layer
from convnp.layers.combine import AlphaPenalty, softmax_over_inputs
from convnp.losses import CrossEntropyLoss
from convnp.model import Sequential
from convnp.optim import SGD

KERNELS = ["per_pair", "per_input"]
# (batch, in, out, spatial, kernel, stride, padding, dilation)
SHAPES = [
    (1, 1, 1, (5, 5), 3, 1, 0, 1),
    (2, 3, 4, (7, 6), (3, 2), (2, 1), (1, 2), 1),
    (3, 4, 2, (9, 8), 3, 2, 1, 2),
    (2, 2, 5, (6, 5), (1, 3), 1, "same", 1),
    (1, 5, 3, (8, 8), 5, 3, 2, 1),
]


def _layer(shape, kernels, rng, dtype=np.float64, **kwargs):
    batch, cin, cout, spatial, kernel, stride, padding, dilation = shape
    layer = FeatureMapCombination(
        cin,
        cout,
        kernel,
        stride,
        padding,
        dilation,
        kernels=kernels,
        dtype=dtype,
        rng=rng,
        **kwargs,
    )
    # away from the uniform init, so every α_ij differs and the softmax Jacobian is generic
    layer.params["alpha_logits"][...] = rng.standard_normal((cout, cin))
    x = rng.standard_normal((batch, cin, *spatial)).astype(dtype)
    return layer, x


def _torch_twin(layer):
    """u_j = Σ_i softmax_i(c)_ij (x_i * k_ij) + b_j from torch primitives (autograd does ∂)."""
    torch = pytest.importorskip("torch")
    conv = layer
    pads = [p for before_after in reversed(conv.pads) for p in before_after]

    def twin(x, params):
        alpha = torch.softmax(params["alpha_logits"], dim=1)  # (out, in): α[j, i]
        kernel = params["weight"]
        if conv.flip_kernel:
            kernel = torch.flip(kernel, dims=(2, 3))
        padded = torch.nn.functional.pad(x, pads)
        options = dict(stride=conv.stride, dilation=conv.dilation)
        if layer.kernels == "per_pair":
            u = torch.nn.functional.conv2d(padded, alpha[:, :, None, None] * kernel, **options)
        else:
            z = torch.nn.functional.conv2d(padded, kernel, groups=layer.in_channels, **options)
            u = torch.einsum("ji,nihw->njhw", alpha, z)
        if "bias" in params:
            u = u + params["bias"][None, :, None, None]
        return u

    return twin


# -- 1. finite differences --------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernels", KERNELS)
def test_gradients_match_finite_differences(shape, kernels, rng):
    layer, x = _layer(shape, kernels, rng)
    errors = assert_gradients_match_numeric(layer, x)
    assert set(errors) == {"input", "weight", "alpha_logits", "bias"}


@pytest.mark.parametrize("kernels", KERNELS)
def test_gradients_without_bias_and_with_true_convolution(kernels, rng):
    layer, x = _layer(SHAPES[1], kernels, rng, bias=False, flip_kernel=True)
    assert_gradients_match_numeric(layer, x)


# -- 2. PyTorch autograd twin -----------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch_autograd_twin(shape, kernels, dtype, rng):
    layer, x = _layer(shape, kernels, rng, dtype=dtype)
    assert_matches_torch(layer, _torch_twin(layer), x, rng)


def test_flipped_kernels_match_torch_twin(rng):
    layer, x = _layer(SHAPES[2], "per_pair", rng, flip_kernel=True)
    assert_matches_torch(layer, _torch_twin(layer), x, rng)


def test_alpha_gradient_is_the_spec_formula(rng):
    """∂E/∂α_ij = Σ_uv δ_j ∘ (x_i * k_ij), then ∂E/∂c = α (∂E/∂α − Σ_k α_k ∂E/∂α_k) (SPEC §4)."""
    from convnp.layers import Conv2d

    layer, x = _layer((2, 3, 4, (7, 7), 3, 1, 1, 1), "per_pair", rng)
    y = layer.forward(x)
    delta = rng.standard_normal(y.shape)
    layer.backward(delta)
    dalpha = np.zeros((4, 3))
    for j in range(4):
        for i in range(3):
            single = Conv2d(1, 1, 3, padding=1, bias=False, dtype=np.float64)
            single.params["weight"][0, 0] = layer.params["weight"][j, i]
            response = single.forward(x[:, i : i + 1])  # x_i * k_ij
            dalpha[j, i] = np.sum(delta[:, j] * response[:, 0])
    alpha = layer.alpha
    expected = alpha * (dalpha - (alpha * dalpha).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(layer.grads["alpha_logits"], expected, rtol=1e-10, atol=1e-12)


# -- 3. penalties -------------------------------------------------------------------------
PENALTY_CASES = [("l1", 0.5), ("entropy", 0.5), ("power", 0.3), ("power", 0.5), ("power", 0.8)]


@pytest.mark.parametrize(("kind", "power"), PENALTY_CASES)
@pytest.mark.parametrize("spread", [1.0, 8.0])
def test_penalty_gradients_match_finite_differences(kind, power, spread, rng):
    penalty = AlphaPenalty(kind, weight=0.7, power=power)
    logits = spread * rng.standard_normal((5, 4))
    _, analytic = penalty.evaluate(logits)
    numeric = numerical_gradient(lambda: penalty.evaluate(logits)[0], logits)
    if kind == "l1":  # both are ~0: compare absolutely
        assert np.abs(numeric).max() < 1e-9 and np.abs(analytic).max() < 1e-15
    else:
        assert relative_error(analytic, numeric) < 1e-7


@pytest.mark.parametrize(("kind", "power"), PENALTY_CASES)
def test_penalties_match_torch_autograd(kind, power, rng):
    torch = pytest.importorskip("torch")
    weight = 0.3
    logits = 3.0 * rng.standard_normal((6, 5))
    value, dlogits = AlphaPenalty(kind, weight, power).evaluate(logits)
    c = torch.tensor(logits, requires_grad=True)
    alpha = torch.softmax(c, dim=1)
    if kind == "l1":
        reference = alpha.abs().sum()
    elif kind == "entropy":
        reference = -(alpha * torch.log_softmax(c, dim=1)).sum()
    else:
        reference = (alpha**power).sum()
    (weight * reference).backward()
    assert value == pytest.approx(weight * reference.item(), rel=1e-12)
    np.testing.assert_allclose(dlogits, c.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_printed_l1_penalty_is_constant_and_its_gradient_is_zero(rng):
    """Σ|α_ij| = out_channels for any c, and λ(|α_i| − α_i Σ_k|α_k|) = 0 (SPEC §4)."""
    penalty = AlphaPenalty("l1", weight=2.0)
    for spread in (0.0, 1.0, 30.0):
        logits = spread * rng.standard_normal((7, 6))
        value, dlogits = penalty.evaluate(logits)
        assert value == pytest.approx(2.0 * 7, abs=1e-12)
        assert np.abs(dlogits).max() <= 1e-15  # zero up to round-off of Σ_i α_i = 1


def test_printed_l1_penalty_leaves_training_unchanged(rng):
    """Same data, same init: with and without the printed penalty the weights agree."""
    models = []
    for penalty in (None, "l1"):
        layer_rng = np.random.default_rng(1)
        comb = FeatureMapCombination(
            3, 4, 3, penalty=penalty, penalty_weight=1.0, dtype=np.float64, rng=layer_rng
        )
        models.append(
            Sequential(comb, Flatten(), Linear(4 * 4 * 4, 3, dtype=np.float64, rng=layer_rng))
        )
    data_rng = np.random.default_rng(2)
    batches = [
        (data_rng.standard_normal((8, 3, 6, 6)), data_rng.integers(0, 3, 8)) for _ in range(5)
    ]
    reported = []
    for model in models:
        optimizer = SGD(model.parameters(), lr=0.5, momentum=0.9)
        loss = CrossEntropyLoss()
        for x, labels in batches:
            error = loss.forward(model.forward(x), labels)
            model.backward(loss.backward())
            reported.append(error + model.apply_regularizers())
            optimizer.step()
    plain, penalised = models
    assert np.abs(plain[0].params["alpha_logits"]).max() > 1e-3  # α did move
    for (_, ours, _), (_, theirs, _) in zip(plain.parameters(), penalised.parameters()):
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.subtract(reported[5:], reported[:5]), 4.0, atol=1e-12)


@pytest.mark.parametrize(("kind", "power"), [("entropy", 0.5), ("power", 0.5), ("power", 0.2)])
def test_working_penalties_make_alpha_sparse(kind, power, rng):
    """Gradient descent on λ·R alone drives every α_.j from near-uniform to one-hot."""
    penalty = AlphaPenalty(kind, weight=1.0, power=power)
    logits = 0.1 * rng.standard_normal((8, 6))
    start, _ = penalty.evaluate(logits)
    for _ in range(300):
        logits -= 2.0 * penalty.evaluate(logits)[1]
    end, _ = penalty.evaluate(logits)
    alpha = softmax_over_inputs(logits)
    assert end < start
    assert alpha.max(axis=1).min() > 0.95
    l1 = AlphaPenalty("l1", weight=1.0)
    assert l1.evaluate(logits)[0] == pytest.approx(l1.evaluate(0.0 * logits)[0])  # L1 blind


@pytest.mark.parametrize("kind", ["l1", "entropy", "power"])
def test_uniform_alpha_is_a_stationary_point_of_every_penalty(kind):
    _, dlogits = AlphaPenalty(kind, weight=1.0).evaluate(np.zeros((3, 5)))
    assert np.abs(dlogits).max() < 1e-15


def test_penalty_extremes_stay_finite():
    logits = np.array([[0.0, -500.0, -1000.0], [50.0, 0.0, -50.0]], dtype=np.float32)
    for kind in ("entropy", "power"):
        value, dlogits = AlphaPenalty(kind, weight=1.0).evaluate(logits)
        assert np.isfinite(value) and np.isfinite(dlogits).all()
        assert dlogits.dtype == np.float32


def test_layer_penalty_plugs_into_the_regularizer_hook(rng):
    layer, x = _layer(SHAPES[1], "per_pair", rng, penalty="entropy", penalty_weight=0.1)
    model = Sequential(layer)
    y = model.forward(x)
    model.backward(rng.standard_normal(y.shape))
    data_gradient = layer.grads["alpha_logits"].copy()
    value = model.apply_regularizers()
    expected_value, expected_gradient = AlphaPenalty("entropy", 0.1).evaluate(
        layer.params["alpha_logits"]
    )
    assert value == pytest.approx(expected_value) and value > 0
    np.testing.assert_allclose(
        layer.grads["alpha_logits"], data_gradient + expected_gradient, atol=1e-15
    )
    np.testing.assert_allclose(value, 0.1 * -(layer.alpha * np.log(layer.alpha)).sum())


@pytest.mark.parametrize("penalty", [None, "l1", "entropy", "power"])
@pytest.mark.parametrize("kernels", KERNELS)
def test_penalty_and_kernels_round_trip_through_model_files(penalty, kernels, rng, tmp_path):
    layer, x = _layer(
        SHAPES[1],
        kernels,
        rng,
        dtype=np.float32,
        penalty=penalty,
        penalty_weight=0.25,
        penalty_power=0.4,
    )
    path = tmp_path / "m.safetensors"
    io.save(Sequential(layer), path)
    loaded = io.load(path)[0]
    assert repr(loaded) == repr(layer)
    assert loaded.config() == layer.config()
    assert [repr(p) for p in loaded.regularizers] == [repr(p) for p in layer.regularizers]
    assert len(loaded.regularizers) == (penalty is not None)
    np.testing.assert_array_equal(loaded.forward(x), layer.forward(x))
    if penalty is not None:
        assert loaded.regularizers[0](loaded) == layer.regularizers[0](layer)


# -- 4. behaviour -------------------------------------------------------------------------
def test_repr_and_config():
    layer = FeatureMapCombination(6, 16, 5)
    assert repr(layer) == "FeatureMapCombination(6, 16, kernel_size=(5, 5))"
    layer = FeatureMapCombination(
        6,
        16,
        (5, 3),
        2,
        "same",
        bias=False,
        kernels="per_input",
        penalty="power",
        penalty_weight=0.01,
    )
    assert repr(layer) == (
        "FeatureMapCombination(6, 16, kernel_size=(5, 3), stride=(2, 2), padding='same', "
        "bias=False, kernels='per_input', penalty='power', penalty_weight=0.01, "
        "penalty_power=0.5)"
    )
    assert FeatureMapCombination(**layer.config()).config() == layer.config()


def test_init_alpha_uniform_and_effective_kernel_like_torch(rng):
    layer = FeatureMapCombination(6, 16, 5, rng=rng)
    np.testing.assert_allclose(layer.alpha, 1 / 6)
    effective = layer.alpha[:, :, None, None] * layer.params["weight"]
    bound = 1 / np.sqrt(6 * 25)  # PyTorch's Conv2d(6, 16, 5) bound
    assert np.abs(effective).max() <= bound * (1 + 1e-6)
    assert np.abs(effective).max() > 0.9 * bound
    assert layer.params["weight"].shape == (16, 6, 5, 5)
    assert FeatureMapCombination(6, 16, 5, kernels="per_input").params["weight"].shape == (
        6,
        1,
        5,
        5,
    )
    np.testing.assert_allclose(layer.alpha.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kernels", KERNELS)
def test_dtype_preserved_and_no_grad_keeps_nothing(kernels, rng):
    layer, x = _layer(SHAPES[1], kernels, rng, dtype=np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32
    assert layer.backward(np.ones_like(y)).dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    with layer.no_grad():
        layer.forward(x)
    assert layer._cache is None
    # no inner layer that could hold a cache of its own: the layer is built on primitives
    assert not any(isinstance(value, Layer) for value in vars(layer).values())
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones_like(y))
    layer.train().astype(np.float64)
    assert layer.forward(x.astype(np.float64)).dtype == np.float64


def test_errors_name_the_layer_and_shapes(rng):
    layer = FeatureMapCombination(3, 4, 3, rng=rng)
    with pytest.raises(RuntimeError, match=r"FeatureMapCombination\(3, 4.*before forward"):
        layer.backward(np.zeros((1, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"FeatureMapCombination.*\(N, 3, H, W\).*\(2, 2, 5, 5\)"):
        layer.forward(np.zeros((2, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="does not match parameter dtype"):
        layer.forward(np.zeros((2, 3, 5, 5), np.float64))
    with pytest.raises(ValueError, match=r"FeatureMapCombination.*larger than the padded input"):
        layer.forward(np.zeros((1, 3, 2, 2), np.float32))
    y = layer.forward(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"FeatureMapCombination.*backward expected dy"):
        layer.backward(np.zeros((2, 3, 3, 3), np.float32))
    assert y.shape == (2, 4, 3, 3)
    with pytest.raises(ValueError, match="kernels must be one of"):
        FeatureMapCombination(3, 4, 3, kernels="shared")
    with pytest.raises(ValueError, match="penalty must be None or one of"):
        FeatureMapCombination(3, 4, 3, penalty="l2")
    with pytest.raises(ValueError, match="power must lie in"):
        FeatureMapCombination(3, 4, 3, penalty="power", penalty_power=1.5)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        AlphaPenalty("entropy", weight=-1.0)
