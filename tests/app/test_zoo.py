"""The built-in recipes (app/zoo.py): each builds, runs and is seeded; unknown names are
rejected; a recipe's loss, schedule and augmentation come with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convnp.app import zoo
from convnp.data import augment
from convnp.layers import BatchNorm2d, Dropout


@pytest.mark.parametrize("name", ["bouvrie", "lenet5", "modern"])
def test_built_in_recipes_build_and_run(name):
    recipe = zoo.get_recipe(name)
    model = recipe.build(rng=np.random.default_rng(0))
    assert model.forward(np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 10)
    assert recipe.loss in ("squared_error", "cross_entropy")


def test_recipes_are_seeded_and_unknown_names_rejected():
    first = zoo.get_recipe("modern").build(rng=np.random.default_rng(4))
    second = zoo.get_recipe("modern").build(rng=np.random.default_rng(4))
    for (_, a, _), (_, b, _) in zip(first.parameters(), second.parameters()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown model 'alexnet'; built-in models: bouvrie"):
        zoo.get_recipe("alexnet")


def test_fashion_recipe_builds_runs_and_names_its_augmentation():
    recipe = zoo.get_recipe("fashion")
    model = recipe.build(rng=np.random.default_rng(0))
    assert any(isinstance(layer, BatchNorm2d) for layer in model)
    assert any(isinstance(layer, Dropout) for layer in model)
    assert model.predict(np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 10)
    transform = recipe.make_augmentation()
    assert json.loads(json.dumps(augment.describe(transform)))["type"] == "Compose"
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    assert transform(x, np.random.default_rng(2)).shape == x.shape
    assert recipe.schedule == "cosine" and recipe.loss == "cross_entropy"
