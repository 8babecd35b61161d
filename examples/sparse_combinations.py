"""Learned combinations of feature maps (SPEC §4): does a sparsity penalty make α sparse?

A LeNet-5-shaped network whose second convolution is a ``FeatureMapCombination``
(u_j = Σ_i α_ij (x_i * k_ij) + b_j, α_.j = softmax_i(c_.j)) is trained with

* no penalty,
* the Notes' printed penalty λ Σ|α_ij| ("l1": constant under the softmax, zero gradient),
* the entropy penalty λ Σ_j H(α_.j),
* the power penalty λ Σ α_ij^p, p = 0.5,

from the same initial weights and the same batches, on mnist5k (all 4,000 training
images) and on a Fashion-MNIST training subset (default: its first 10,000 images), and
tested on each full test set. Reported per run: test accuracy, the fraction of output
maps whose largest α_ij exceeds 0.9, and the mean entropy of α_.j (nats; uniform over
6 inputs is ln 6 = 1.79, one-hot is 0). The α matrices are drawn to one PNG.

The logits c get 10x the base learning rate (SGD ``lr_mult``) in every run: at α ≈ 1/C
the softmax scales their gradient down by about 1/C, and with the base rate α barely moves
in 10 epochs whatever the penalty.

The figure goes to ``--out`` (default runs/examples/sparse_combinations, which git ignores;
the documentation shows the copy kept in examples/figures).

Run (about 10-20 minutes on two busy cores; needs matplotlib for the figure):
    python examples/sparse_combinations.py
    python examples/sparse_combinations.py --epochs 3 --fashion-train 2000   # quick look
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from convnp import train
from convnp.data import DataLoader, load_dataset
from convnp.layers import AvgPool2d, Conv2d, FeatureMapCombination, Flatten, Linear, Tanh
from convnp.losses import CrossEntropyLoss
from convnp.model import Sequential
from convnp.optim import SGD

# name -> (penalty, λ) of the FeatureMapCombination
PENALTIES = {
    "none": (None, 0.0),
    "printed L1": ("l1", 0.01),
    "entropy": ("entropy", 0.01),
    "power p=0.5": ("power", 0.03),
}
COMBINATION = 3  # index of the FeatureMapCombination in the network


def build(penalty: str | None, weight: float, seed: int) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential(
        Conv2d(1, 6, 5, padding=2, rng=rng),
        Tanh(),
        AvgPool2d(2),
        FeatureMapCombination(6, 16, 5, penalty=penalty, penalty_weight=weight, rng=rng),
        Tanh(),
        AvgPool2d(2),
        Flatten(),
        Linear(16 * 5 * 5, 120, rng=rng),
        Tanh(),
        Linear(120, 84, rng=rng),
        Tanh(),
        Linear(84, 10, rng=rng),
    )


def sparsity(alpha: np.ndarray) -> tuple[float, float]:
    """(fraction of output maps j with max_i α_ij > 0.9, mean over j of H(α_.j) in nats)."""
    entropy = -(alpha * np.log(np.maximum(alpha, 1e-300))).sum(axis=1)
    return float((alpha.max(axis=1) > 0.9).mean()), float(entropy.mean())


def run(name: str, data_name: str, train_count: int | None, args: argparse.Namespace) -> dict:
    data = load_dataset(data_name)
    images, labels = data.train_images[:train_count], data.train_labels[:train_count]
    train_loader = DataLoader(
        images, labels, args.batch_size, seed=args.seed, normalize="standardize"
    )
    test_loader = DataLoader(
        data.test_images,
        data.test_labels,
        1000,
        shuffle=False,
        normalize="standardize",
        mean=train_loader.mean,
        std=train_loader.std,
    )
    penalty, weight = PENALTIES[name]
    model = build(penalty, weight, args.seed)
    optimizer = SGD(
        model.parameters(),
        lr=args.lr,
        momentum=0.9,
        lr_mult={f"{COMBINATION}.alpha_logits": args.alpha_lr_mult},
    )
    started = time.perf_counter()
    train.fit(
        model, CrossEntropyLoss(), optimizer, train_loader, epochs=args.epochs, progress=False
    )
    seconds = time.perf_counter() - started
    accuracy = train.evaluate(model, test_loader, CrossEntropyLoss())["accuracy"]
    alpha = model[COMBINATION].alpha
    one_hot, entropy = sparsity(alpha)
    return {
        "data": data_name,
        "train": len(labels),
        "penalty": name,
        "accuracy": accuracy,
        "one_hot": one_hot,
        "entropy": entropy,
        "seconds": seconds,
        "alpha": alpha,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fashion-train", type=int, default=10000, help="training images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--alpha-lr-mult", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default="runs/examples/sparse_combinations", help="folder for the figure"
    )
    args = parser.parse_args()

    results = []
    print("| data | train images | penalty | test accuracy | max α > 0.9 | mean H(α) | time |")
    print("|---|---|---|---|---|---|---|")
    for data_name, count in (("mnist5k", None), ("fashion-mnist", args.fashion_train)):
        for name in PENALTIES:
            result = run(name, data_name, count, args)
            results.append(result)
            print(
                f"| {data_name} | {result['train']} | {name} | {result['accuracy']:.4f} | "
                f"{result['one_hot']:.0%} | {result['entropy']:.3f} | {result['seconds']:.0f} s |",
                flush=True,
            )

    from convnp.app.plot import plot_alpha

    panels = {
        f"{r['data']}, {r['penalty']}: acc {r['accuracy']:.3f}, "
        f"{r['one_hot']:.0%} one-hot, H {r['entropy']:.2f}": r["alpha"]
        for r in results
    }
    path = plot_alpha(
        panels,
        Path(args.out) / "sparse_combinations.png",
        title=f"α of the second conv layer after {args.epochs} epochs (SPEC §4)",
        max_columns=len(PENALTIES),
    )
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
