"""The network of Bouvrie's notes, built by hand and trained on the bundled MNIST digits.

This is DeepLearnToolbox's 6c5-2s-12c5-2s CNN (the MATLAB reference implementation of the
notes): true convolutions (flip_kernel=True), sigmoid units, mean subsampling, a fully
connected sigmoid output, squared error averaged over the batch, plain SGD with lr 1 and
batches of 50. tests/test_bouvrie_reference.py checks it step for step against a port of
that MATLAB code.

    python examples/bouvrie_mnist.py [epochs]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from convnp import Sequential
from convnp.data import DataLoader, load_dataset
from convnp.layers import AvgPool2d, Conv2d, Flatten, Linear, Sigmoid
from convnp.losses import SquaredErrorLoss
from convnp.optim import SGD


def main(epochs: int = 40) -> None:
    rng = np.random.default_rng(0)
    model = Sequential(
        Conv2d(1, 6, 5, flip_kernel=True, rng=rng),  # 6 maps of 24x24
        Sigmoid(),
        AvgPool2d(2),  # 12x12
        Conv2d(6, 12, 5, flip_kernel=True, rng=rng),  # 12 maps of 8x8
        Sigmoid(),
        AvgPool2d(2),  # 4x4
        Flatten(),  # 192 features
        Linear(192, 10, rng=rng),
        Sigmoid(),
    )
    model.summary((1, 28, 28))
    loss = SquaredErrorLoss(reduction="mean")  # E = 1/2 Σ_k (y_k - t_k)², averaged over the batch
    optimizer = SGD(model.parameters(), lr=1.0)

    digits = load_dataset("mnist5k")
    train = DataLoader(digits.train_images, digits.train_labels, batch_size=50, seed=0)
    test = DataLoader(digits.test_images, digits.test_labels, batch_size=1000, shuffle=False)

    started = time.perf_counter()
    for epoch in range(epochs):
        for x, labels in train:
            y = model.forward(x)
            error = loss.forward(y, labels)  # integer labels become 0/1 one-of-c targets
            model.backward(loss.backward())
            optimizer.step()
        model.eval()
        correct = sum(int((model.forward(x).argmax(1) == t).sum()) for x, t in test)
        model.train()
        print(f"epoch {epoch + 1:2d}: last batch loss {error:.4f}, test accuracy "
              f"{correct / len(digits.test_labels):.3f}")  # fmt: skip
    print(f"{epochs} epochs in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
