"""Variable-size inputs (SPEC §3): train on 28×28 Fashion-MNIST, classify on bigger canvases.

A classifier needs a fixed number of summaries whatever the input size. Two ways:

* fully convolutional: the last convolution has one map per class and each map is averaged
  globally, so no layer fixes the input size;
* adaptive pooling: the pooling regions scale with the input (AdaptiveAvgPool2d(3) always
  gives a 3×3 grid of averages), so the fully connected layer after it always fits.

Both are trained on 28×28 images, then tested on the same test images pasted onto 36×36 and
44×44 canvases of background, centred or at random positions.

Why the fully convolutional network can be exactly size-invariant here: the background is
0 (inputs scaled to [0, 1]) and the convolutions have no bias, so with ReLU every map is 0
wherever the receptive field sees only background. With padding="full" convolutions and
ceil_mode max pooling, the 28×28 network already computes every position on which the image
has any influence; a bigger canvas only adds positions that are exactly 0. The global
average then divides the same class sums by a larger area, which cannot change the
predicted class. This holds exactly when the image's offset is a multiple of the total
pooling stride (4): centred on 36×36 or 44×44 the offsets are 4 and 8. At random offsets,
max pooling makes the predictions only nearly the same (SPEC §3). The adaptive classifier's
bins instead cover different parts of the garment at each size. Run:

    python examples/variable_size.py [--train-size 20000] [--epochs 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from convnp import schedules, train
from convnp.data import DataLoader, load_dataset
from convnp.layers import (
    AdaptiveAvgPool2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
)
from convnp.losses import CrossEntropyLoss
from convnp.model import Sequential
from convnp.optim import Adam

SIZES = (28, 36, 44)


def features(rng: np.random.Generator) -> list[Layer]:
    """Bias-free conv/ReLU/max-pool trunk that keeps every partial overlap (see above)."""
    return [
        Conv2d(1, 32, 3, padding="full", bias=False, rng=rng),
        ReLU(),
        MaxPool2d(2, ceil_mode=True),
        Conv2d(32, 64, 3, padding="full", bias=False, rng=rng),
        ReLU(),
        MaxPool2d(2, ceil_mode=True),
        Conv2d(64, 64, 3, padding="full", bias=False, rng=rng),
        ReLU(),
    ]


def fully_convolutional(rng: np.random.Generator) -> Sequential:
    one_map_per_class = Conv2d(64, 10, 3, padding="full", bias=False, rng=rng)
    return Sequential(*features(rng), one_map_per_class, GlobalAvgPool2d(), Flatten())


def adaptive_pooling(rng: np.random.Generator) -> Sequential:
    return Sequential(*features(rng), AdaptiveAvgPool2d(3), Flatten(), Linear(64 * 9, 10, rng=rng))


def on_canvas(images: np.ndarray, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Paste each (1, 28, 28) image onto a size×size background (0), centred or, given rng,
    at a random position per image (one vectorised scatter, no loop over images)."""
    n, channels, height, width = images.shape
    canvas = np.zeros((n, channels, size, size), dtype=images.dtype)
    if rng is None:
        top = np.full(n, (size - height) // 2)
        left = np.full(n, (size - width) // 2)
    else:
        top = rng.integers(0, size - height + 1, n)
        left = rng.integers(0, size - width + 1, n)
    rows = top[:, None, None] + np.arange(height)[None, :, None]  # (n, H, 1)
    cols = left[:, None, None] + np.arange(width)[None, None, :]  # (n, 1, W)
    index = np.arange(n)[:, None, None]
    canvas.transpose(0, 2, 3, 1)[index, rows, cols] = images.transpose(0, 2, 3, 1)
    return canvas


def accuracy(model: Sequential, images: np.ndarray, labels: np.ndarray) -> float:
    x = images.astype(np.float32) / 255.0  # the training loader's "unit" normalisation
    return float((model.predict(x, batch_size=500).argmax(axis=1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    data = load_dataset("fashion-mnist")
    subset = rng.permutation(len(data.train_labels))[: args.train_size]
    loader = DataLoader(data.train_images[subset], data.train_labels[subset], 64, seed=args.seed)
    canvases = {
        (size, placement): on_canvas(
            data.test_images, size, None if placement == "centred" else np.random.default_rng(1)
        )
        for size in SIZES
        for placement in ("centred", "random")
    }
    for name, build in [
        ("fully convolutional", fully_convolutional),
        ("adaptive", adaptive_pooling),
    ]:
        model = build(rng)
        optimizer = Adam(model.parameters(), lr=2e-3)
        schedule = schedules.CosineLR(2e-3, total_steps=args.epochs * len(loader))
        started = time.perf_counter()
        history = train.fit(model, CrossEntropyLoss(), optimizer, loader, epochs=args.epochs,
                            schedule=schedule, progress=False)  # fmt: skip
        print(f"\n{name} classifier, trained {args.epochs} epochs on {args.train_size} 28x28 "
              f"images in {time.perf_counter() - started:.0f}s "
              f"(training accuracy {history[-1]['train_accuracy']:.4f}):")  # fmt: skip
        if name == "fully convolutional":
            model.summary((1, 44, 44))  # the same network, summarised at 44x44
        for (size, placement), images in canvases.items():
            if size == 28 and placement == "random":
                continue  # a 28x28 canvas has only one position
            score = accuracy(model, images, data.test_labels)
            print(f"  {size}x{size} {placement:8s} test accuracy {score:.4f}")


if __name__ == "__main__":
    main()
