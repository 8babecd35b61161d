"""convnp: convolutional neural networks on NumPy, every backward pass written by hand."""

from convnp.gradcheck import gradcheck
from convnp.model import Sequential

__version__ = "0.1.0"

__all__ = ["Sequential", "gradcheck", "__version__"]
