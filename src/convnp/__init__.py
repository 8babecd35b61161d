"""convnp: convolutional neural networks on NumPy, every backward pass written by hand."""

import os

# OpenBLAS's worker threads busy-wait for about 0.1 s after every matrix product (2^28
# cycles) before they sleep, holding a core that convnp's own threads (parallel inference,
# split training batches) need: inference right after training ran at 8.6k instead of
# 11k images/s (bouvrie, 2 cores). 2^4 cycles lets them sleep at once; large products are
# as fast (measured). OpenBLAS reads this when NumPy first loads, so it applies only when
# convnp is imported before NumPy (as by the ``convnp`` command); a value already set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from convnp.gradcheck import gradcheck  # noqa: E402  (after the setting above)
from convnp.io import load  # noqa: E402
from convnp.model import Sequential  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Sequential", "gradcheck", "load", "__version__"]
