"""Adapters to other systems: ONNX export, PyTorch conversion, scikit-learn estimator.

They read only public layer methods and share helpers from the layers, not from each other.
"""
