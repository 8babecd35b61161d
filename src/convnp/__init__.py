"""convnp: convolutional neural networks on NumPy, every backward pass written by hand.

Importing convnp changes nothing in the process (no environment variables, no thread or
allocator settings); runtime tuning lives in ``convnp.runtime`` and is called explicitly.
"""

from convnp.gradcheck import gradcheck
from convnp.io import load
from convnp.model import Sequential

__version__ = "0.1.0"

__all__ = ["Sequential", "gradcheck", "load", "__version__"]
