"""Run independent blocks of work on several CPU cores at once: the sample blocks of
inference (``predict_in_blocks``). The core (``convnp.model``) knows nothing of this
module; the CLI, ``convnp.train`` and the benchmarks call it explicitly. Training uses
processes instead (``convnp.runtime.distributed``, MPI ranks): threads splitting a training
step lost to the interpreter lock on small batches, and two ranks train 2-3x as fast.

NumPy releases Python's global interpreter lock inside its element loops, copies and BLAS
calls, so Python threads that each push a different block of samples through the network
really run in parallel. Element-wise work (tanh, max pooling, im2col copies) is otherwise
single-threaded in NumPy; only the matrix products use every core. While the blocks run,
BLAS is limited to one thread per block: two blocks each asking OpenBLAS for every core
oversubscribe the CPU (measured on 2 cores, ``modern`` inference: 1521 images/s versus
2901 with the limit). Without threadpoolctl, which sets that limit, blocks run one after
another.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(usable_cores())


def usable_cores() -> set[int]:
    """The CPU cores this process may run on: its affinity mask, or all of them."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


@cache
def _blas_controller() -> Any:
    """threadpoolctl's controller, found once (finding the libraries costs ~0.5 ms)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def map_blocks(function: Callable[[T], R], blocks: Sequence[T], threads: int) -> list[R]:
    """``[function(b) for b in blocks]``, on up to ``threads`` threads, in order.

    Exceptions raised by ``function`` propagate to the caller unchanged.
    """
    threads = min(threads, len(blocks))
    controller = _blas_controller() if threads > 1 else None
    if controller is None:
        return [function(block) for block in blocks]
    from concurrent.futures import ThreadPoolExecutor  # ~15 ms to import: only when used

    # each block runs in a copy of the caller's context, so np.errstate etc. apply there too
    contexts = [contextvars.copy_context() for _ in blocks]
    with controller.limit(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        # a pool per call: a forked child never inherits a pool whose threads are gone
        return list(pool.map(lambda context, block: context.run(function, block), contexts, blocks))


# Samples per block in ``predict_in_blocks``. Measured for the built-in models on 28x28
# images, batch 1000, 2 cores: 64 is best or within noise of best for all three (32 to 256
# tried).
INFERENCE_BLOCK = 64


def predict_in_blocks(
    model: Any, x: np.ndarray, *, block: int = INFERENCE_BLOCK, threads: int | None = None
) -> np.ndarray:
    """``model``'s eval-mode output for the batch x, computed block by block on several cores.

    Each block of ``block`` samples goes through the whole network before the next starts,
    so a layer's output is still in the CPU cache when the next layer reads it (depth-first,
    as fused inference engines do), and the blocks run on ``threads`` cores at once
    (default: all available). Eval-mode layers treat samples independently, so the result
    equals ``model.predict(x)``. It runs within ``model.no_grad()``, so no layer keeps
    arrays for a backward; the model's training/eval mode is restored afterwards.
    """
    if block < 1:
        raise ValueError(f"predict_in_blocks: block must be >= 1, got {block}")
    threads = available_cores() if threads is None else int(threads)
    was_training = model.training
    model.eval()
    try:
        with model.no_grad():
            if np.ndim(x) == 0 or len(x) <= block:
                return model.forward(x)
            blocks = [x[start : start + block] for start in range(0, len(x), block)]
            return np.concatenate(map_blocks(model.forward, blocks, threads))
    finally:
        model.train(was_training)
