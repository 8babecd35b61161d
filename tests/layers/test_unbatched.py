"""One sample without the batch axis, (C, *spatial), as PyTorch's N-d layers take it:
convolution and pooling add a batch axis of one on entry and drop it on exit."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp import layers as L

torch = pytest.importorskip("torch")

CASES = [
    (L.Conv1d(2, 3, 3, stride=2, padding=1), torch.nn.Conv1d(2, 3, 3, stride=2, padding=1)),
    (L.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), None),
    (L.Conv3d(2, 3, 2, dilation=(1, 2, 1)), torch.nn.Conv3d(2, 3, 2, dilation=(1, 2, 1))),
    (L.MaxPool1d(2), torch.nn.MaxPool1d(2)),
    (L.MaxPool2d(3, stride=2, padding=1), torch.nn.MaxPool2d(3, stride=2, padding=1)),
    (L.AvgPool3d(2, ceil_mode=True), torch.nn.AvgPool3d(2, ceil_mode=True)),
    (L.LPPool2d(2, 2), torch.nn.LPPool2d(2, 2)),
    (L.AdaptiveAvgPool2d((3, 2)), torch.nn.AdaptiveAvgPool2d((3, 2))),
    (L.AdaptiveMaxPool1d(3), torch.nn.AdaptiveMaxPool1d(3)),
    (L.GlobalAvgPool2d(), torch.nn.AdaptiveAvgPool2d(1)),
]


def _twin(layer, module):
    """The torch module (its parameters loaded from the convnp layer)."""
    if module is None:  # the padding-mode conv: built from the layer's config
        config = {k: v for k, v in layer.config().items() if k != "flip_kernel"}
        module = torch.nn.Conv2d(**config)
    return module.double()


@pytest.mark.parametrize("layer, module", CASES, ids=lambda value: repr(value)[:40])
def test_unbatched_matches_torch_and_one_sample_batch(layer, module, rng):
    layer = layer.astype(np.float64)
    x = rng.uniform(-1, 1, (2, *(7,) * layer.nd))  # distinct values: max pools have no ties
    assert_matches_torch(layer, _twin(layer, module), x, rng)
    assert_gradients_match_numeric(layer, x)

    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    grads = {key: value.copy() for key, value in layer.grads.items()}
    y_batch = layer.forward(x[None])
    assert y_batch.ndim == x.ndim + 1
    np.testing.assert_array_equal(y, y_batch[0])
    np.testing.assert_array_equal(dx, layer.backward(dy[None])[0])
    for key, value in grads.items():
        np.testing.assert_array_equal(value, layer.grads[key])


def test_backward_params_and_return_indices_unbatched(rng):
    conv = L.Conv2d(2, 3, 3, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 5, 6))
    dy = rng.standard_normal(conv.forward(x).shape)
    conv.backward_params(dy)
    expected = conv.grads["weight"].copy()
    conv.forward(x[None])
    conv.backward_params(dy[None])
    np.testing.assert_array_equal(conv.grads["weight"], expected)

    pool = L.MaxPool2d(2, return_indices=True)
    y, indices = pool.forward(x)
    y_t, indices_t = torch.nn.MaxPool2d(2, return_indices=True)(torch.tensor(x))
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())


def test_wrong_ndim_still_names_the_layout():
    with pytest.raises(ValueError, match=r"expected input \(N, 2, H, W\), got shape \(5, 5\)"):
        L.Conv2d(2, 3, 3).forward(np.zeros((5, 5), np.float32))
    assert L.Conv2d.accepts_unbatched and not L.Linear.accepts_unbatched
