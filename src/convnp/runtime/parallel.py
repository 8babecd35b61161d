"""Run independent blocks of work on several CPU cores at once: the sample blocks of
inference (``predict_in_blocks``) and the sub-batches of a large training step
(``BatchSplitter``, data parallelism). The core (``convnp.model``) knows nothing of this
module; the CLI, ``convnp.train`` and the benchmarks call it explicitly.

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
import copy
import math
import os
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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
    equals ``model.predict(x)``; the model's training/eval mode is restored afterwards.
    """
    if block < 1:
        raise ValueError(f"predict_in_blocks: block must be >= 1, got {block}")
    threads = available_cores() if threads is None else int(threads)
    was_training = model.training
    model.eval()
    try:
        if np.ndim(x) == 0 or len(x) <= block:
            return model.forward(x)
        blocks = [x[start : start + block] for start in range(0, len(x), block)]
        return np.concatenate(map_blocks(model.forward, blocks, threads))
    finally:
        model.train(was_training)


# Below about this many activation values per batch (all layer outputs, all samples), thread
# start-up and the interpreter lock cost more than the second core gains. Measured on 2 cores
# (split / one pass): modern batch 32 (2.7M values) 1.05x, 64 (5.4M) 1.33x, 128 1.50x;
# lenet5 batch 64 (0.9M) 0.83x, 256 (3.6M) 1.21x; bouvrie batch 50 (0.5M) 0.73x, 500 1.38x.
MIN_SPLIT_VALUES = 3_000_000


class BatchSplitter:
    """One training step's forward and backward as sub-batches on several cores.

    Sub-batch h (n_h of the N samples) runs through a replica of the network that shares the
    parameter arrays but has its own caches and gradient arrays, and through its own copy of
    the loss. For a loss averaged over its batch, E = Σ_h (n_h/N)·E_h, so the replica's
    backward starts from (n_h/N)·∂E_h/∂y, and the parameter gradient of the whole batch is
    the sum of the replicas' (each layer's gradient is a sum over samples). Replica 0 is the
    model itself, so the sum lands in the model's own ``grads``.

    Valid only when every layer treats samples independently in training (not batch norm,
    whose statistics span the batch, nor dropout, whose masks come from one random stream):
    ``supports`` checks ``Layer.samples_independent``. Sums are formed in a different order
    than in one pass, so results agree to rounding, and are reproducible for the same number
    of threads.
    """

    def __init__(self, model: Any, loss: Any, threads: int | None = None) -> None:
        self.model, self.loss = model, loss
        self.threads = available_cores() if threads is None else int(threads)
        self._replicas: list[tuple[Any, Any]] = []
        self._values_per_sample: dict[tuple[int, ...], int] = {}

    @staticmethod
    def supports(model: Any) -> bool:
        return all(layer.samples_independent for layer in model)

    def worthwhile(self, x: np.ndarray) -> bool:
        """Split this batch? Only with 2+ threads, a supported model, and enough work."""
        if self.threads < 2 or len(x) < 2 or _blas_controller() is None:
            return False
        if not self.supports(self.model):
            return False
        shape = tuple(x.shape[1:])
        if shape not in self._values_per_sample:
            shapes = self.model.output_shapes(shape)
            self._values_per_sample[shape] = sum(math.prod(s) for s in shapes)
        return len(x) * self._values_per_sample[shape] >= MIN_SPLIT_VALUES

    def forward_backward(self, x: np.ndarray, t: Any) -> tuple[np.ndarray, float]:
        """Fill the model's grads for batch (x, t); return the output y and the loss E."""
        replicas = self._current_replicas()
        count = min(self.threads, len(x))
        jobs = list(zip(replicas, np.array_split(x, count), np.array_split(np.asarray(t), count)))
        mean = getattr(self.loss, "reduction", "mean") == "mean"

        def run(job: tuple[tuple[Any, Any], np.ndarray, np.ndarray]) -> tuple[np.ndarray, float]:
            (replica, loss), x_part, t_part = job
            weight = len(x_part) / len(x) if mean else 1.0  # E = Σ_h (n_h/N) E_h
            y = replica.forward(x_part)
            error = loss.forward(y, t_part) * weight
            replica.backward(loss.backward() * y.dtype.type(weight), input_grad=False)
            return y, error

        results = map_blocks(run, jobs, self.threads)
        for replica, _ in replicas[1:count]:
            for (_, _, total), (_, _, part) in zip(self.model.parameters(), replica.parameters()):
                total += part
        return np.concatenate([y for y, _ in results]), float(sum(e for _, e in results))

    def _current_replicas(self) -> list[tuple[Any, Any]]:
        """(model, loss) per thread; rebuilt if the model's parameter arrays were replaced."""
        params = [p for _, p, _ in self.model.parameters()]
        stale = not self._replicas or any(
            p is not q for p, (_, q, _) in zip(params, self._replicas[-1][0].parameters())
        )
        if stale:
            shared = {id(p): p for p in params}  # deepcopy keeps these, copies the rest
            self._replicas = [(self.model, self.loss)] + [
                (copy.deepcopy(self.model, dict(shared)), copy.deepcopy(self.loss))
                for _ in range(self.threads - 1)
            ]
        for replica, _ in self._replicas:
            replica.train(self.model.training)
        return self._replicas
