"""Train the built-in ``fashion`` recipe on full Fashion-MNIST with the library directly.

The recipe (``convnp.app.zoo.RECIPES["fashion"]``) names the architecture, SGD settings, cosine
schedule, input normalisation and, in ``extra["augment"]``, the training augmentation as a
``convnp.data.augment.build`` description; ``make_loss``, ``make_optimizer`` and
``make_augmentation`` turn them into objects, as ``convnp train --model fashion --data
fashion-mnist`` does. Run:

    python examples/fashion_recipe.py [--epochs N] [--seed 0] [--out runs/fashion]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from convnp import io, schedules, train
from convnp.app import zoo
from convnp.data import DataLoader, augment, load_dataset


def main() -> None:
    recipe = zoo.get_recipe("fashion")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=recipe.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for checkpoints and the model")
    args = parser.parse_args()
    started = time.perf_counter()
    data = load_dataset("fashion-mnist")
    transform = recipe.make_augmentation()
    train_loader = DataLoader(
        data.train_images,
        data.train_labels,
        recipe.batch_size,
        seed=args.seed,
        normalize=recipe.normalize,
        transform=transform,
    )
    test_loader = DataLoader(
        data.test_images,
        data.test_labels,
        1000,
        shuffle=False,
        normalize=recipe.normalize,
        mean=train_loader.mean,
        std=train_loader.std,
    )
    model = recipe.build((1, 28, 28), 10, rng=np.random.default_rng(args.seed))
    optimizer = recipe.make_optimizer(model)
    schedule = schedules.CosineLR(recipe.lr, total_steps=args.epochs * len(train_loader))
    print(model.summary((1, 28, 28), print_fn=None))
    print(f"augmentation: {transform!r}")
    history = train.fit(
        model,
        recipe.make_loss(),
        optimizer,
        train_loader,
        epochs=args.epochs,
        val=test_loader,
        schedule=schedule,
        out_dir=args.out,
        info={"model": recipe.name, "augment": augment.describe(transform)},
    )
    seconds = time.perf_counter() - started
    accuracy = history[-1]["val_accuracy"]
    if args.out:
        io.save(model, f"{args.out}/{io.MODEL_NAME}", {"test_accuracy": accuracy})
    print(json.dumps({"recipe": recipe.name, "epochs": args.epochs, "seed": args.seed,
                      "test_accuracy": accuracy, "seconds": round(seconds, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
