"""Keras-style conveniences on Sequential: compile/fit/evaluate/predict_proba/save/summary on
arrays, convnp.load, and fit's clear error when handed arrays."""

from __future__ import annotations

import numpy as np
import pytest

import convnp
from convnp import train
from convnp.app import zoo
from convnp.data import load_dataset
from convnp.layers import EuclideanRBF, Flatten, Linear, ReLU, Sigmoid
from convnp.losses import CrossEntropyLoss, RBFEnergyLoss, SquaredErrorLoss
from convnp.model import Sequential
from convnp.optim import SGD, Adam


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("mnist5k")
    keep = np.random.default_rng(0).permutation(len(data.train_labels))[:1000]
    return data.train_images[keep], data.train_labels[keep], data.test_images, data.test_labels


def small_model(rng=None) -> Sequential:
    rng = np.random.default_rng(0) if rng is None else rng
    return Sequential(Flatten(), Linear(784, 64, rng=rng), ReLU(), Linear(64, 10, rng=rng))


def test_fit_on_arrays_learns_and_reports_validation(digits):
    x, y, test_x, test_y = digits
    model = small_model()
    history = model.fit(x, y, epochs=3, batch_size=32, validation_split=0.2, verbose=False)
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(history[-1])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert isinstance(model.loss, CrossEntropyLoss) and isinstance(model.optimizer, Adam)
    result = model.evaluate(test_x, test_y)
    assert result["accuracy"] > 0.7 and result["count"] == len(test_y)  # chance: 0.1
    assert model.input_shape == (1, 28, 28)


def test_predict_proba_is_what_convnp_predict_reports(digits):
    x, y, test_x, _ = digits
    model = small_model()
    model.fit(x, y, epochs=1, verbose=False)
    probabilities = model.predict_proba(test_x[:50])
    logits = model.predict(test_x[:50].astype(np.float32) / 255)  # uint8 means 0..255 -> [0, 1]
    expected, name = train.output_scores("cross_entropy", logits)
    assert name == "probabilities"
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(model.predict_classes(test_x[:50]), logits.argmax(axis=1))


def test_save_and_convnp_load_keep_input_shape_and_loss(digits, tmp_path):
    x, y, test_x, _ = digits
    model = small_model().compile("cross_entropy", "sgd", lr=0.05)
    assert isinstance(model.optimizer, SGD) and model.optimizer.lr == 0.05
    model.fit(x, y, epochs=1, verbose=False)
    model.save(tmp_path / "model.safetensors")
    loaded = convnp.load(tmp_path / "model.safetensors")
    assert loaded.input_shape == (1, 28, 28)
    assert isinstance(loaded.loss, CrossEntropyLoss)
    np.testing.assert_array_equal(
        loaded.predict_proba(test_x[:20]), model.predict_proba(test_x[:20])
    )
    text = loaded.summary(print_fn=None)  # the input shape the model knows
    assert "(1, 28, 28)" in text and "total parameters: 50,890" in text


def test_summary_without_a_known_input_shape_says_what_to_do():
    with pytest.raises(ValueError, match=r"summary\(\(1, 28, 28\)\)"):
        small_model().summary()
    assert "(64,)" in small_model().summary((1, 28, 28), print_fn=None)


def test_compile_defaults_follow_the_output_layer():
    rng = np.random.default_rng(0)
    sigmoid = Sequential(Flatten(), Linear(784, 10, rng=rng), Sigmoid()).compile()
    rbf = Sequential(Flatten(), Linear(784, 8, rng=rng), EuclideanRBF(8, 10, rng=rng)).compile()
    assert isinstance(sigmoid.loss, SquaredErrorLoss) and isinstance(rbf.loss, RBFEnergyLoss)
    assert isinstance(small_model().compile().loss, CrossEntropyLoss)
    assert zoo.get_recipe("lenet5-classic").build().compile().loss.__class__ is RBFEnergyLoss
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        small_model().compile(loss="mse")
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        small_model().compile(optimizer="rmsprop")


def test_fit_checks_its_arguments(digits):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match="validation_split"):
        small_model().fit(x, y, validation_split=1.0)
    with pytest.raises(ValueError, match="labels"):
        small_model().fit(x, y[:10])


def test_train_fit_with_arrays_names_the_right_call(digits):
    x, y, _, _ = digits
    model = small_model().compile()
    for batches in ((x, y), [x, y], x):
        with pytest.raises(TypeError, match=r"model\.fit\(x, y, epochs=\.\.\.") as error:
            train.fit(model, model.loss, Adam(model.parameters()), batches, epochs=1)
        assert "DataLoader(x, y, batch_size)" in str(error.value)


def test_a_saved_model_predicts_the_same_through_the_command_line(digits, tmp_path, capsys):
    from convnp.app import cli

    x, y, test_x, _ = digits
    model = small_model()
    model.fit(x, y, epochs=1, verbose=False)
    model.save(tmp_path / "model.safetensors")
    paths = []
    for index in range(3):
        paths.append(str(tmp_path / f"digit{index}.npy"))
        np.save(paths[-1], test_x[index, 0])
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "model.safetensors"), *paths]) == 0
    printed = [line.split(": ")[1].split()[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == [str(c) for c in model.predict_classes(test_x[:3])]
