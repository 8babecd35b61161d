"""Run independent blocks of work on several CPU cores at once: the sample blocks of
eval-mode inference (``Sequential.forward``). Training uses processes instead
(``convnp.runtime.distributed``, MPI ranks): threads splitting a training step lost to
the interpreter lock on small batches, and two ranks train 2-3x as fast as the threads.

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
