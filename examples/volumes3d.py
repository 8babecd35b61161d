"""3-D convolution (SPEC §6) on synthetic volumes: is the solid a cube, a ball or a cross?

Each 16×16×16 volume holds one shape of random size and position: a solid cube, a solid
ball, or a cross of three orthogonal bars, in Gaussian noise. Conv3d kernels see 3×3×3
neighbourhoods, max pooling and a global average over the volume collect the evidence
wherever the shape sits. Run:

    python examples/volumes3d.py [--epochs 8] [--noise 0.3] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from convnp import schedules, train
from convnp.data import DataLoader
from convnp.layers import (
    AdaptiveAvgPool3d,
    BatchNorm3d,
    Conv3d,
    Flatten,
    Linear,
    MaxPool3d,
    ReLU,
)
from convnp.losses import CrossEntropyLoss
from convnp.model import Sequential
from convnp.optim import Adam

CLASSES = ("cube", "ball", "cross")
SIZE = 16


def volumes(count: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` volumes (count, 1, SIZE, SIZE, SIZE) float32 and their labels (count,)."""
    labels = rng.integers(0, len(CLASSES), count)
    radius = rng.uniform(3.0, 5.5, (count, 1, 1, 1))  # half the cube side, the ball radius
    centre = rng.uniform(radius[:, 0, 0, 0, None] + 0.5, SIZE - radius[:, 0, 0, 0, None] - 1.5,
                         (count, 3))  # fmt: skip
    grid = np.arange(SIZE)
    # offsets from the centre along z, y, x, each broadcast to (count, S, S, S)
    dz, dy, dx = (
        np.abs(grid.reshape(shape) - centre[:, axis].reshape(-1, 1, 1, 1))
        for axis, shape in enumerate([(1, -1, 1, 1), (1, 1, -1, 1), (1, 1, 1, -1)])
    )
    cube = np.maximum(np.maximum(dz, dy), dx) <= radius
    ball = dz**2 + dy**2 + dx**2 <= radius**2
    bar = radius / 3  # half-width of each bar of the cross
    cross = ((dy <= bar) & (dx <= bar) & (dz <= radius)) | (
        (dz <= bar) & ((dy <= bar) & (dx <= radius) | (dx <= bar) & (dy <= radius))
    )
    solid = np.select([labels[:, None, None, None] == k for k in range(3)], [cube, ball, cross])
    x = solid + noise * rng.standard_normal(solid.shape)
    return x[:, None].astype(np.float32), labels


def network(rng: np.random.Generator) -> Sequential:
    return Sequential(
        Conv3d(1, 8, 3, padding=1, rng=rng),
        BatchNorm3d(8),
        ReLU(),
        MaxPool3d(2),
        Conv3d(8, 16, 3, padding=1, rng=rng),
        BatchNorm3d(16),
        ReLU(),
        MaxPool3d(2),
        Conv3d(16, 16, 3, padding=1, rng=rng),
        BatchNorm3d(16),
        ReLU(),
        AdaptiveAvgPool3d(1),
        Flatten(),
        Linear(16, len(CLASSES), rng=rng),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    x_train, t_train = volumes(2400, args.noise, rng)
    x_test, t_test = volumes(600, args.noise, rng)
    model = network(rng)
    loss = CrossEntropyLoss()
    optimizer = Adam(model.parameters(), lr=3e-3)
    batches = DataLoader(x_train, t_train, batch_size=32, seed=args.seed, normalize=None)
    test = DataLoader(x_test, t_test, batch_size=1000, shuffle=False, normalize=None)
    schedule = schedules.CosineLR(3e-3, total_steps=args.epochs * len(batches))
    started = time.perf_counter()
    history = train.fit(model, loss, optimizer, batches, epochs=args.epochs, val=test,
                        schedule=schedule, progress=False)  # fmt: skip
    for record in history:
        print(f"epoch {record['epoch']}: test accuracy {record['val_accuracy']:.4f}")
    result = train.evaluate(model, test, loss, len(CLASSES))
    print(f"Conv3d on {len(x_test)} noisy {SIZE}^3 volumes: accuracy {result['accuracy']:.4f} "
          f"after {args.epochs} epochs, {time.perf_counter() - started:.1f}s")  # fmt: skip
    print("confusion (rows: true " + "/".join(CLASSES) + ")")
    print(result["confusion"])


if __name__ == "__main__":
    main()
