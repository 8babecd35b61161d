"""Dropout and Dropout2d: finite differences with a fixed mask, a torch twin, statistics and
behaviour (DESIGN 3.6)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp import io
from convnp.layers import Dropout, Dropout2d, Linear
from convnp.model import Sequential
from convnp.optim import SGD

SHAPES = [(1, 7), (3, 4, 5), (2, 3, 4, 5), (2, 2, 3, 1, 4)]


class _FixedMask:
    """Re-seed the layer's generator before every forward: the same mask each call, so the
    layer is a fixed linear map that finite differences can check."""

    def __init__(self, layer: Dropout, seed: int = 7) -> None:
        self.layer = layer
        self.seed = seed
        self.params = layer.params
        self.grads = layer.grads

    def train(self) -> None:
        self.layer.train()

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.layer.rng = np.random.default_rng(self.seed)
        return self.layer.forward(x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self.layer.backward(dy)

    def __repr__(self) -> str:
        return repr(self.layer)


def _cases():
    for shape in SHAPES:
        yield Dropout, shape
    for shape in SHAPES[2:3]:
        yield Dropout2d, shape


@pytest.mark.parametrize("cls,shape", list(_cases()))
@pytest.mark.parametrize("p", [0.3, 0.75])
def test_gradients_match_finite_differences_with_a_fixed_mask(cls, shape, p, rng):
    layer = cls(p)
    assert_gradients_match_numeric(_FixedMask(layer), rng.standard_normal(shape))


def _torch_twin(layer):
    """y = x ∘ r/(1 − p), with the mask our forward drew, from torch primitives."""
    torch = pytest.importorskip("torch")

    def twin(x, params):
        mask, _ = layer._cache
        return x * torch.tensor(mask)

    return twin


@pytest.mark.parametrize("cls,shape", list(_cases()))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch_twin(cls, shape, dtype, rng):
    layer = cls(0.4, rng=rng)
    assert_matches_torch(layer, _torch_twin(layer), rng.standard_normal(shape).astype(dtype), rng)


def test_survivors_are_scaled_like_torch_dropout(rng):
    """Each output is 0 or x/(1 − p), exactly torch.nn.functional.dropout's two values."""
    torch = pytest.importorskip("torch")
    x = rng.uniform(1.0, 2.0, (50, 40))
    y = Dropout(0.3, rng=rng).forward(x)
    y_torch = torch.nn.functional.dropout(torch.tensor(x), p=0.3, training=True).numpy()
    for out in (y, y_torch):
        kept = out != 0
        np.testing.assert_allclose(out[kept], x[kept] / 0.7, rtol=1e-15)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_drop_rate_and_expectation(p, rng):
    x = np.ones((200, 500))
    y = Dropout(p, rng=rng).forward(x)
    dropped = np.mean(y == 0)
    assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / x.size)  # five binomial std
    assert abs(y.mean() - 1.0) < 0.02  # E[y] = x


def test_dropout2d_zeroes_whole_maps(rng):
    x = rng.uniform(1.0, 2.0, (20, 16, 3, 4))
    y = Dropout2d(0.5, rng=rng).forward(x)
    zero_maps = np.all(y == 0, axis=(2, 3))
    kept_maps = np.all(y != 0, axis=(2, 3))
    assert np.all(zero_maps | kept_maps)
    assert 0.3 < zero_maps.mean() < 0.7
    np.testing.assert_allclose(y[kept_maps], 2 * x[kept_maps])


def test_eval_is_identity_both_ways_and_no_grad_keeps_nothing(rng):
    layer = Dropout(0.5, rng=rng)
    layer.eval()
    x = rng.standard_normal((3, 4)).astype(np.float32)
    assert layer.forward(x) is x
    dy = rng.standard_normal((3, 4)).astype(np.float32)
    assert layer.backward(dy) is dy  # ∂E/∂x = dy
    with pytest.raises(ValueError, match="backward expected dy of shape"):
        layer.backward(dy[:2])
    with layer.no_grad():
        assert layer.forward(x) is x
    assert layer._cache is None
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(x)


def test_extreme_probabilities(rng):
    x = rng.standard_normal((4, 5))
    np.testing.assert_array_equal(Dropout(0.0, rng=rng).forward(x), x)
    layer = Dropout(1.0, rng=rng)
    assert np.all(layer.forward(x) == 0) and np.all(layer.backward(x) == 0)


def test_same_seed_same_masks_and_dtype_preserved():
    x = np.ones((6, 8), np.float32)
    a = Dropout(0.5, rng=np.random.default_rng(3)).forward(x)
    b = Dropout(0.5, rng=np.random.default_rng(3)).forward(x.astype(np.float64))
    assert a.dtype == np.float32 and b.dtype == np.float64
    np.testing.assert_array_equal(a, b)  # masks do not depend on the dtype


def test_checkpoint_resume_replays_the_same_masks(rng, tmp_path):
    model = Sequential(Linear(4, 6, rng=rng), Dropout(0.5, rng=np.random.default_rng(1)))
    optimizer = SGD(model.parameters(), lr=0.1)
    x = np.ones((5, 4), np.float32)
    model.forward(x)  # advance the generator past its seed state
    io.save_checkpoint(tmp_path / "c.safetensors", model, optimizer, [])
    expected = model.forward(x)
    restored = io.load_checkpoint(tmp_path / "c.safetensors")["model"]
    np.testing.assert_array_equal(restored.forward(x), expected)


def test_repr_config_and_errors(rng):
    assert repr(Dropout(0.25)) == "Dropout(p=0.25)"
    assert Dropout2d(**Dropout2d(0.1).config()).p == 0.1
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        Dropout(1.5)
    with pytest.raises(ValueError, match=r"Dropout2d.*expected input \(N, C, H, W\).*\(3, 4\)"):
        Dropout2d(0.5).forward(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        Dropout(0.5).forward(np.zeros((3, 4), np.int64))
    layer = Dropout(0.5, rng=rng)
    layer.forward(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"backward expected dy of shape \(3, 4\)"):
        layer.backward(np.zeros((4, 3)))
