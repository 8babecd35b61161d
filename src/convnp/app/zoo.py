"""Built-in models by name, each with the loss, optimizer and batch size it is meant for."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convnp.app import architectures
from convnp.data import augment
from convnp.layers import Conv2d, EuclideanRBF, Flatten, Linear, ScaledTanh, Subsample2d
from convnp.losses import LOSSES  # the loss kinds a recipe names, averaged over the batch
from convnp.model import Sequential
from convnp.optim import SGD, Optimizer, optimizer_class


def make_loss(kind: str) -> Any:
    """The loss object for a recipe's loss kind."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; known: {', '.join(LOSSES)}")
    return LOSSES[kind]()


@dataclass(frozen=True)
class Recipe:
    """A named architecture plus its recommended training set-up.

    ``architecture``: a string in ``convnp.app.architectures``' notation, or a function
    ``(input_shape, num_classes, *, dtype, rng) -> Sequential`` for networks the notation
    cannot express. ``loss``: "squared_error" (sigmoid outputs, one-of-c targets, SPEC §1)
    or "cross_entropy" (logits), or "rbf" (EuclideanRBF energies, ``RBFEnergyLoss``).
    ``optimizer``: "sgd" or "adam".
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

    def make_loss(self) -> Any:
        return make_loss(self.loss)

    def make_optimizer(
        self,
        model: Sequential,
        *,
        optimizer: str | None = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        nesterov: bool = False,
    ) -> Optimizer:
        """The recipe's optimizer over ``model.parameters()``; arguments override it."""
        optimizer_type = optimizer_class(optimizer or self.optimizer)
        options = {
            "lr": self.lr if lr is None else lr,
            "weight_decay": self.weight_decay if weight_decay is None else weight_decay,
        }
        if optimizer_type is SGD:
            options["momentum"] = self.momentum if momentum is None else momentum
            options["nesterov"] = nesterov
        return optimizer_type(model.parameters(), **options)

    def make_augmentation(self) -> Any:
        """The training-time transform in ``extra["augment"]`` (None if the recipe has none)."""
        spec = self.extra.get("augment")
        return None if spec is None else augment.build(spec)

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


# LeCun et al. (1998), Table I, drawn as printed: row i = S2 map i, column j = C3 map j,
# "X" where C3 map j combines S2 map i (60 of the 96 pairs).
_LENET5_TABLE_I = (
    "X   XXX  XXXX XX",
    "XX   XXX  XXXX X",
    "XXX   XXX  X XXX",
    " XXX  XXXX  X XX",
    "  XXX  XXXX XX X",
    "   XXX  XXXX XXX",
)
#: LeNet-5's C3 connection table as Conv2d's ``connection_table``: (16, 6), [j][i] = i ∈ M_j.
LENET5_C3_TABLE: tuple[tuple[bool, ...], ...] = tuple(
    tuple(row[j] == "X" for row in _LENET5_TABLE_I) for j in range(16)
)


def lenet5_classic(
    input_shape: tuple[int, ...] = (1, 28, 28),
    num_classes: int = 10,
    *,
    dtype: Any = np.float32,
    rng: np.random.Generator | None = None,
) -> Sequential:
    """LeNet-5 as published (LeCun et al. 1998), with Bouvrie's trained subsampling.

    C1 6@5x5 on the input padded by 2 (28x28 -> 32x32), S2 β·down()+b (2x2), C3 16@5x5
    with Table I's connections (``LENET5_C3_TABLE``), S4, C5 120@5x5, F6 84, every one
    followed by LeCun's scaled tanh, then 84 -> ``num_classes`` Euclidean RBF units
    (energies; train with ``RBFEnergyLoss``). S2 and S4 start at β = 1/4 (an average, not
    a sum, of each 2x2 block) so the following tanh starts unsaturated.
    """
    rng = np.random.default_rng() if rng is None else rng
    channels, height, width = input_shape
    if min(height, width) < 28 or height % 4 or width % 4:
        raise ValueError(
            f"lenet5-classic needs H and W multiples of 4 and at least 28, got {input_shape}"
        )
    c5_size = [(size // 2 - 4) // 2 - 4 for size in (height, width)]  # C1 keeps the size
    s2 = Subsample2d(6, 2, dtype=dtype)
    s4 = Subsample2d(16, 2, dtype=dtype)
    for subsample in (s2, s4):
        subsample.params["beta"][...] = 0.25
    return Sequential(
        Conv2d(channels, 6, 5, padding=2, dtype=dtype, rng=rng),
        ScaledTanh(),
        s2,
        ScaledTanh(),
        Conv2d(6, 16, 5, connection_table=LENET5_C3_TABLE, dtype=dtype, rng=rng),
        ScaledTanh(),
        s4,
        ScaledTanh(),
        Conv2d(16, 120, 5, dtype=dtype, rng=rng),
        ScaledTanh(),
        Flatten(),
        Linear(120 * c5_size[0] * c5_size[1], 84, dtype=dtype, rng=rng),
        ScaledTanh(),
        EuclideanRBF(84, num_classes, dtype=dtype, rng=rng),
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
            schedule="cosine",
            normalize="standardize",
        ),
        Recipe(
            name="fashion",
            description=(
                "Two conv-maxpool-BN-ReLU blocks (32, 64 maps), 256 BN-ReLU units with "
                "dropout; SGD momentum, cosine lr, flips and 1-pixel shifts (Fashion-MNIST)"
            ),
            architecture="32c3p1-2m-bn-relu-64c3p1-2m-bn-relu-256f-bn-relu-d0.5",
            loss="cross_entropy",
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            batch_size=128,
            epochs=15,  # 12 ended at 92.9-93.0% test accuracy, 15 at 93.2-93.3%
            schedule="cosine",
            normalize="standardize",
            extra={
                "augment": [
                    {"type": "RandomHorizontalFlip", "config": {"p": 0.5}},
                    {"type": "RandomTranslate", "config": {"max_shift": 1, "padding_mode": "edge"}},
                ]
            },
        ),
        Recipe(
            name="lenet5-classic",
            description=(
                "LeNet-5 as published: Table I's C3 connections, trained subsampling, scaled "
                "tanh, Euclidean RBF output with LeCun's energy loss (argmin decides)"
            ),
            architecture=lenet5_classic,
            loss="rbf",
            optimizer="sgd",
            lr=0.003,
            momentum=0.9,
            batch_size=64,
            epochs=10,
            normalize="standardize",
        ),
    )
}


def custom_recipe(description: str, *, loss: str = "cross_entropy") -> Recipe:
    """The training set-up for a user's own architecture (``--arch``/``--config``): the
    "modern" recipe's optimizer, schedule and normalisation with the given ``loss``."""
    return dataclasses.replace(
        RECIPES["modern"], name="custom", architecture=description, description=description,
        loss=loss,
    )  # fmt: skip


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(RECIPES)}") from None
