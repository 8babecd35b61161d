"""LeNet-5 as published (``lenet5-classic``) next to the modernised ``lenet5`` recipe.

``lenet5-classic``: C1 6@5x5 on the padded 32x32 input, Bouvrie/LeCun trained subsampling
(β·down(x) + b), C3 with LeCun et al.'s Table I connections, S4, C5 120, F6 84, scaled tanh
throughout, and 10 Euclidean RBF units trained with LeCun's energy loss (SPEC §6).
``lenet5``: the same shape with average pooling, plain tanh, a full C3 and a linear
softmax output with cross-entropy.

Both are trained with their recipes' optimizer settings for the same number of epochs on
mnist5k (4,000 training images) and on a Fashion-MNIST training subset, and tested on the
full test sets. Everything goes under ``--out`` (default runs/examples/lenet5_classic, which
git ignores): a run folder per model and data set (model.safetensors, history.json) and,
with matplotlib installed, the classic model's figures from ``convnp.app.plot.plot_run`` in
figures/lenet5-classic-<data>/ (the documentation shows copies kept in examples/figures).

Run (about 10 minutes on two busy cores):
    python examples/lenet5_classic.py
    python examples/lenet5_classic.py --epochs 2 --fashion-train 2000   # quick look
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from convnp import io, train
from convnp.app import zoo
from convnp.data import DataLoader, load_dataset


def run(model_name: str, data_name: str, count: int | None, args: argparse.Namespace) -> dict:
    recipe = zoo.get_recipe(model_name)
    data = load_dataset(data_name)
    train_loader = DataLoader(
        data.train_images[:count],
        data.train_labels[:count],
        recipe.batch_size,
        seed=args.seed,
        normalize=recipe.normalize,
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
    model = recipe.build(
        data.train_images.shape[1:], data.num_classes, rng=np.random.default_rng(args.seed)
    )
    optimizer = recipe.make_optimizer(model)
    loss = recipe.make_loss()
    out = Path(args.out) / f"{model_name}-{data_name}"
    started = time.perf_counter()
    history = train.fit(
        model, loss, optimizer, train_loader, epochs=args.epochs, val=test_loader,
        out_dir=out, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    info = {
        "dataset": data_name,
        "model": model_name,
        "loss": recipe.loss,
        "class_names": list(data.class_names),
        "normalize": {
            "kind": recipe.normalize,
            "mean": np.asarray(train_loader.mean).tolist(),
            "std": np.asarray(train_loader.std).tolist(),
        },
        "test_accuracy": history[-1]["val_accuracy"],
    }
    io.save(model, out / io.MODEL_NAME, info)
    return {
        "model": model_name,
        "data": data_name,
        "train": len(train_loader.labels),
        "accuracy": history[-1]["val_accuracy"],
        "seconds": seconds,
        "run": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fashion-train", type=int, default=10000, help="training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default="runs/examples/lenet5_classic", help="folder for runs and figures"
    )
    args = parser.parse_args()

    print("| data | train images | model | test accuracy | time |")
    print("|---|---|---|---|---|")
    classic_runs = []
    for data_name, count in (("mnist5k", None), ("fashion-mnist", args.fashion_train)):
        for model_name in ("lenet5", "lenet5-classic"):
            result = run(model_name, data_name, count, args)
            print(
                f"| {data_name} | {result['train']} | {model_name} | {result['accuracy']:.4f} | "
                f"{result['seconds']:.0f} s |",
                flush=True,
            )
            if model_name == "lenet5-classic":
                classic_runs.append(result)
    try:
        from convnp.app.plot import plot_run
    except ImportError:
        return
    for result in classic_runs:
        folder = Path(args.out) / "figures" / f"lenet5-classic-{result['data']}"
        for path in plot_run(result["run"], folder):
            print(f"figure: {path}")


if __name__ == "__main__":
    main()
