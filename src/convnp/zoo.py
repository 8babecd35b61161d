"""Built-in models by name, each with the loss, optimizer and batch size it is meant for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convnp import architectures
from convnp.model import Sequential


@dataclass(frozen=True)
class Recipe:
    """A named architecture plus its recommended training set-up.

    ``architecture``: a string in ``convnp.architectures``' notation, or a function
    ``(input_shape, num_classes, *, dtype, rng) -> Sequential`` for networks the notation
    cannot express. ``loss``: "squared_error" (sigmoid outputs, one-of-c targets, SPEC §1)
    or "cross_entropy" (logits). ``optimizer``: "sgd" or "adam".
    """

    name: str
    description: str
    architecture: str | Callable[..., Sequential]
    loss: str
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    normalize: str = "unit"
    extra: dict[str, Any] = field(default_factory=dict)

    def build(
        self,
        input_shape: tuple[int, ...] = (1, 28, 28),
        num_classes: int = 10,
        *,
        dtype: Any = np.float32,
        rng: np.random.Generator | None = None,
    ) -> Sequential:
        if callable(self.architecture):
            return self.architecture(input_shape, num_classes, dtype=dtype, rng=rng)
        return architectures.from_string(
            self.architecture, input_shape, num_classes, dtype=dtype, rng=rng
        )


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="bouvrie",
            description=(
                "The classic 6c5-2s-12c5-2s sigmoid network of Bouvrie's notes and "
                "DeepLearnToolbox: squared error, plain SGD with lr 1, batch 50"
            ),
            architecture="6c5-2s-12c5-2s",
            loss="squared_error",
            optimizer="sgd",
            lr=1.0,
            batch_size=50,
            epochs=40,
        ),
        Recipe(
            name="lenet5",
            description="LeNet-5's shape (C1 6@5x5 padded, S2, C3 16@5x5, S4, 120, 84) with tanh",
            architecture="6c5p2-tanh-2s-16c5-tanh-2s-120f-tanh-84f-tanh",
            loss="cross_entropy",
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            batch_size=64,
            epochs=5,
            normalize="standardize",
        ),
        Recipe(
            name="modern",
            description="conv32-3x3 ReLU, maxpool, conv64-3x3 ReLU, maxpool, 128 ReLU; Adam",
            architecture="32c3p1-relu-2m-64c3p1-relu-2m-128f-relu",
            loss="cross_entropy",
            optimizer="adam",
            lr=1e-3,
            batch_size=128,
            epochs=5,
            normalize="standardize",
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(RECIPES)}") from None
