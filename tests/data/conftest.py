from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from convnp.data.idx import write_idx

MNIST_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _write_idx_set(folder: Path, seed: int = 0, gz: bool = True) -> dict[str, np.ndarray]:
    """Write a tiny MNIST look-alike (6 train, 4 test images of 5x4) under the MNIST names."""
    rng = np.random.default_rng(seed)
    arrays = dict(
        zip(
            MNIST_NAMES,
            (
                rng.integers(0, 256, (6, 5, 4), dtype=np.uint8),
                rng.integers(0, 10, 6, dtype=np.uint8),
                rng.integers(0, 256, (4, 5, 4), dtype=np.uint8),
                rng.integers(0, 10, 4, dtype=np.uint8),
            ),
        )
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / (name if gz else name.removesuffix(".gz")), array)
    return arrays


@pytest.fixture
def write_idx_set() -> Callable[..., dict[str, np.ndarray]]:
    return _write_idx_set
