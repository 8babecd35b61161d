"""LeNet-5 as published: LeCun's RBF energy loss, Table I's C3 connections, the recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric

from convnp import io, train
from convnp.app import zoo
from convnp.data import DataLoader, load_dataset
from convnp.gradcheck import numerical_gradient, relative_error
from convnp.layers import Conv2d, EuclideanRBF, Linear, ScaledTanh, Subsample2d
from convnp.losses import RBFEnergyLoss

# LeCun et al. (1998), Table I, written column by column: the S2 maps each C3 map combines.
TABLE_I_COLUMNS = [
    {0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 5}, {4, 5, 0}, {5, 0, 1},
    {0, 1, 2, 3}, {1, 2, 3, 4}, {2, 3, 4, 5}, {3, 4, 5, 0}, {4, 5, 0, 1}, {5, 0, 1, 2},
    {0, 1, 3, 4}, {1, 2, 4, 5}, {0, 2, 3, 5},
    {0, 1, 2, 3, 4, 5},
]  # fmt: skip


# -- the loss -------------------------------------------------------------------------------
def _energies(rng, n, c, scale=3.0):
    return scale * rng.random((n, c))


def test_worked_example():
    y = np.array([[0.5, 2.0, 3.0]])
    loss = RBFEnergyLoss(rubbish_energy=1.0)
    z = math.exp(-1.0) + math.exp(-0.5) + math.exp(-2.0) + math.exp(-3.0)
    assert loss.forward(y, np.array([0])) == pytest.approx(0.5 + math.log(z), rel=1e-14)
    expected = np.array([[1.0, 0.0, 0.0]]) - np.exp(-y) / z  # [i = D] − e^(−y_i)/Z
    np.testing.assert_allclose(loss.backward(), expected, rtol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("rubbish_energy", [0.1, 1.0, 2.5, 50.0])
@pytest.mark.parametrize("target_kind", ["labels", "distribution"])
def test_gradient_matches_finite_differences(reduction, rubbish_energy, target_kind, rng):
    y = _energies(rng, 5, 4)
    if target_kind == "labels":
        target = rng.integers(0, 4, size=5)
    else:
        target = rng.random((5, 4))
        target /= target.sum(axis=1, keepdims=True)
    loss = RBFEnergyLoss(reduction, rubbish_energy)
    loss.forward(y, target)
    analytic = loss.backward()
    numeric = numerical_gradient(lambda: loss.forward(y, target), y)
    assert relative_error(analytic, numeric) < 1e-7


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_is_cross_entropy_over_negative_energies_and_a_rubbish_class(reduction, dtype, rng):
    torch = pytest.importorskip("torch")
    y = _energies(rng, 6, 10, scale=20.0).astype(dtype)
    labels = rng.integers(0, 10, size=6)
    loss = RBFEnergyLoss(reduction, rubbish_energy=4.0)
    value = loss.forward(y, labels)
    dy = loss.backward()
    y_t = torch.tensor(y, requires_grad=True)
    rubbish = torch.full((6, 1), -4.0, dtype=y_t.dtype)
    reference = torch.nn.functional.cross_entropy(
        torch.cat([-y_t, rubbish], dim=1), torch.tensor(labels), reduction=reduction
    )
    reference.backward()
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    assert value == pytest.approx(reference.item(), rel=tolerance)
    assert dy.dtype == dtype
    np.testing.assert_allclose(dy, y_t.grad.numpy(), rtol=tolerance, atol=tolerance)


def test_stable_for_large_energies_and_large_j():
    loss = RBFEnergyLoss(rubbish_energy=1e4)
    y = np.array([[1e4, 2e4, 5e3], [0.0, 1e5, 1e5]], dtype=np.float32)
    value = loss.forward(y, np.array([2, 0]))
    assert np.isfinite(value) and np.isfinite(loss.backward()).all()


def test_rubbish_term_prevents_collapse():
    """Collapse (every energy 0) is not a minimum, as it would be for the first term alone."""
    loss = RBFEnergyLoss(rubbish_energy=1.0)
    collapsed = loss.forward(np.zeros((1, 10)), np.array([3]))
    separated = np.full((1, 10), 100.0)
    separated[0, 3] = 0.0
    assert loss.forward(separated, np.array([3])) < collapsed
    assert collapsed == pytest.approx(math.log(math.exp(-1.0) + 10))


def test_predictions_are_argmin_and_used_by_training(rng):
    y = _energies(rng, 8, 5)
    loss = RBFEnergyLoss()
    np.testing.assert_array_equal(loss.predictions(y), y.argmin(axis=1))
    np.testing.assert_array_equal(train.predicted_classes(loss, y), y.argmin(axis=1))
    assert not np.array_equal(loss.predictions(y), y.argmax(axis=1))


def test_loss_behaviour(rng):
    loss = RBFEnergyLoss(rubbish_energy=2.0)
    assert repr(loss) == "RBFEnergyLoss(reduction='mean', rubbish_energy=2.0)"
    with pytest.raises(RuntimeError, match="before forward"):
        RBFEnergyLoss().backward()
    with pytest.raises(ValueError, match="rubbish_energy must be > 0"):
        RBFEnergyLoss(rubbish_energy=0.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        loss.forward(_energies(rng, 2, 3), np.array([0, 3]))
    with pytest.raises(ValueError, match="expected logits of shape"):
        loss.forward(np.zeros((2, 3, 1)), np.array([0, 1]))


# -- the C3 table and the network -----------------------------------------------------------
def test_c3_table_is_lecun_table_i():
    table = np.array(zoo.LENET5_C3_TABLE)
    assert table.shape == (16, 6) and table.dtype == bool
    for j, inputs in enumerate(TABLE_I_COLUMNS):
        assert set(np.flatnonzero(table[j])) == inputs, f"C3 map {j}"
    assert table.sum() == 60


def test_architecture_and_published_parameter_count(rng):
    model = zoo.get_recipe("lenet5-classic").build(rng=rng)
    kinds = [type(layer) for layer in model]
    assert kinds[0] is Conv2d and model[0].padding == (2, 2)
    assert kinds.count(ScaledTanh) == 6
    assert [type(layer) for layer in model if layer.params] == [
        Conv2d, Subsample2d, Conv2d, Subsample2d, Conv2d, Linear, EuclideanRBF,
    ]  # fmt: skip
    np.testing.assert_array_equal(model[4].connection_mask, np.array(zoo.LENET5_C3_TABLE))
    assert model[2].params["beta"].tolist() == [0.25] * 6
    # trainable parameters as LeCun et al. count them (C3's unconnected kernels excluded)
    trainable = model.num_parameters() - int((~model[4].connection_mask).sum()) * 25
    assert trainable == 156 + 12 + 1516 + 32 + 48120 + 10164 + 840
    assert model.output_shapes((1, 28, 28))[8] == (120, 1, 1)
    assert model.output_shapes((1, 28, 28))[-1] == (10,)
    with pytest.raises(ValueError, match="multiples of 4 and at least 28"):
        zoo.lenet5_classic((1, 26, 26))


def test_whole_network_gradients_match_finite_differences(rng):
    model = zoo.lenet5_classic(dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 1, 28, 28))
    # energies are ~100, so ε = 1e-5 keeps the round-off of L(v ± ε) below the tolerance
    assert_gradients_match_numeric(model, x, max_checks=8, rng=rng, eps=1e-5)


def test_round_trips_through_a_model_file(rng, tmp_path):
    model = zoo.lenet5_classic(rng=rng)
    io.save(model, tmp_path / "m.safetensors")
    loaded = io.load(tmp_path / "m.safetensors")
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_recipe_trains_on_a_slice_of_mnist5k():
    recipe = zoo.get_recipe("lenet5-classic")
    assert (recipe.loss, recipe.normalize) == ("rbf", "standardize")
    data = load_dataset("mnist5k")
    images, labels = data.train_images[::16], data.train_labels[::16]  # 250 images
    loader = DataLoader(images, labels, recipe.batch_size, seed=0, normalize=recipe.normalize)
    model = recipe.build(rng=np.random.default_rng(0))
    assert isinstance(recipe.make_loss(), RBFEnergyLoss)
    optimizer = recipe.make_optimizer(model)
    history = train.fit(model, recipe.make_loss(), optimizer, loader, epochs=4, progress=False)
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert history[-1]["train_accuracy"] > 0.6
