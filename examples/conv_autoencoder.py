"""A convolutional autoencoder: a Conv2d encoder and a ConvTranspose2d decoder on mnist5k.

The encoder halves the 28×28 digits twice (stride-2 convolutions) down to 8 maps of 7×7
(392 numbers for 784 pixels); the decoder's transposed convolutions (kernel 4, stride 2,
padding 1: the adjoint of a stride-2 convolution, SPEC §2) double the size back, and a
sigmoid gives pixel intensities. Trained with Adam on the squared error against the input
itself; each epoch prints the test reconstruction error next to the error of predicting
the mean training image. With ``--out`` it saves the model (``convnp.load``-able) and, if
matplotlib is installed, a figure of test digits above their reconstructions. Run:

    python examples/conv_autoencoder.py [--epochs 5] [--seed 0] [--out runs/examples/autoencoder]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from convnp import io
from convnp.data import load_dataset
from convnp.layers import Conv2d, ConvTranspose2d, ReLU, Sigmoid
from convnp.losses import SquaredErrorLoss
from convnp.model import Sequential
from convnp.optim import Adam


def autoencoder(rng: np.random.Generator) -> Sequential:
    return Sequential(
        Conv2d(1, 16, 3, stride=2, padding=1, rng=rng),  # 28 -> 14
        ReLU(),
        Conv2d(16, 8, 3, stride=2, padding=1, rng=rng),  # 14 -> 7: the code
        ReLU(),
        ConvTranspose2d(8, 16, 4, stride=2, padding=1, rng=rng),  # 7 -> 14
        ReLU(),
        ConvTranspose2d(16, 1, 4, stride=2, padding=1, rng=rng),  # 14 -> 28
        Sigmoid(),
    )


def reconstruction_error(model: Sequential, images: np.ndarray) -> float:
    """Mean squared error per pixel of the model's reconstructions (eval mode)."""
    return float(np.mean((model.predict(images) - images) ** 2))


def save_figure(model: Sequential, images: np.ndarray, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'convnp[plot]'): no figure")
        return
    shown = images[:10]
    rows = (shown, model.predict(shown))
    figure, axes = plt.subplots(2, len(shown), figsize=(len(shown), 2.2))
    for row, pictures in zip(axes, rows):
        for axis, picture in zip(row, pictures):
            axis.imshow(picture[0], cmap="gray", vmin=0, vmax=1)
            axis.set_axis_off()
    figure.suptitle("test digits (top) and their reconstructions (bottom)")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for the model and figure")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    data = load_dataset("mnist5k")
    train = data.train_images.astype(np.float32) / 255
    test = data.test_images.astype(np.float32) / 255
    model = autoencoder(rng)
    loss = SquaredErrorLoss()
    optimizer = Adam(model.parameters(), lr=1e-3)
    baseline = float(np.mean((train.mean(axis=0) - test) ** 2))
    print(f"predicting the mean training image: test error {baseline:.4f} per pixel")
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        for first in range(0, len(order), args.batch_size):
            batch = train[order[first : first + args.batch_size]]
            loss.forward(model.forward(batch), batch)  # E = ½ Σ (y − x)², per sample
            model.backward(loss.backward(), input_grad=False)
            optimizer.step()
        model.eval()
        print(f"epoch {epoch}: test error {reconstruction_error(model, test):.4f} per pixel "
              f"({time.perf_counter() - started:.0f}s)")  # fmt: skip
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        io.save(model, args.out / "autoencoder.safetensors")
        print(f"wrote {args.out / 'autoencoder.safetensors'}")
        save_figure(model, test, args.out / "reconstructions.png")


if __name__ == "__main__":
    main()
