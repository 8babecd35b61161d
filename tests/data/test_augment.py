"""Batch augmentation: each transform against a per-image loop reference kept here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convnp.data import DataLoader, augment
from convnp.data.augment import Compose, RandomErasing, RandomHorizontalFlip, RandomTranslate


def _batch(rng, shape=(64, 2, 9, 7), dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _shift_reference(image, dy, dx, fill):
    """One image moved by (dy, dx) with ``fill`` entering at the borders (a slow loop)."""
    out = np.full_like(image, fill)
    height, width = image.shape[1:]
    for i in range(height):
        for j in range(width):
            if 0 <= i - dy < height and 0 <= j - dx < width:
                out[:, i, j] = image[:, i - dy, j - dx]
    return out


def test_translate_moves_each_image_by_its_own_shift(rng):
    x = _batch(rng)
    y = RandomTranslate(2, fill=-5.0)(x, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    shifts = []
    for image, out in zip(x, y):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(out, _shift_reference(image, dy, dx, -5.0))
        ]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 10  # per-image draws, not one shift for the whole batch


def test_translate_edge_mode_keeps_a_uniform_background(rng):
    x = np.full((8, 1, 10, 10), -0.4, np.float32)
    x[:, :, 4:6, 4:6] = 2.0
    y = RandomTranslate(3, padding_mode="edge")(x, rng)
    assert set(np.unique(y)) == {np.float32(-0.4), np.float32(2.0)}
    assert np.all((y == 2.0).sum(axis=(1, 2, 3)) == 4)  # the object is never cut off


def test_translate_zero_is_a_copy(rng):
    x = _batch(rng)
    y = RandomTranslate(0)(x, rng)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(x, y)


def test_flip_mirrors_a_random_subset(rng):
    x = _batch(rng, (400, 1, 5, 6))
    y = RandomHorizontalFlip(0.3)(x, rng)
    flipped = np.array([np.array_equal(b, a[..., ::-1]) for a, b in zip(x, y)])
    same = np.array([np.array_equal(b, a) for a, b in zip(x, y)])
    assert np.all(flipped ^ same)
    assert 0.2 < flipped.mean() < 0.4
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x, rng), x)
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(x, rng), x[..., ::-1])


def test_erasing_blanks_one_rectangle_in_the_chosen_images(rng):
    x = rng.uniform(1.0, 2.0, (300, 3, 12, 10)).astype(np.float32)
    transform = RandomErasing(p=0.5, scale=(0.05, 0.2), value=0.0)
    y = transform(x, rng)
    assert y.dtype == np.float32
    erased = y == 0
    assert np.all(erased == erased[:, :1])  # every channel at the same place
    fractions = []
    for mask in erased[:, 0]:
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask)
        box = np.zeros_like(mask)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert np.array_equal(mask, box)  # one axis-aligned rectangle
        fractions.append(mask.mean())
    assert 0.35 < len(fractions) / len(x) < 0.65
    assert min(fractions) > 0.03 and max(fractions) < 0.3  # scale, up to rounding
    np.testing.assert_array_equal(y[~erased], x[~erased])
    np.testing.assert_array_equal(RandomErasing(p=0.0)(x, rng), x)


def test_compose_applies_in_order_with_one_generator(rng):
    x = _batch(rng)
    steps = [RandomTranslate(1), RandomHorizontalFlip(), RandomErasing()]
    expected_rng, actual_rng = np.random.default_rng(5), np.random.default_rng(5)
    expected = x
    for step in steps:
        expected = step(expected, expected_rng)
    np.testing.assert_array_equal(Compose(*steps)(x, actual_rng), expected)


def test_describe_and_build_round_trip_through_json():
    transform = Compose(RandomTranslate(3, "reflect"), RandomHorizontalFlip(0.25), RandomErasing())
    spec = json.loads(json.dumps(augment.describe(transform)))
    rebuilt = augment.build(spec)
    assert repr(rebuilt) == repr(transform)
    listed = augment.build([{"type": "RandomTranslate", "config": {"max_shift": 1}}])
    assert (
        repr(listed) == "Compose(RandomTranslate(max_shift=1, padding_mode='constant', fill=0.0))"
    )
    assert augment.build({"type": "RandomHorizontalFlip"}).p == 0.5


def test_usable_as_a_loader_transform_and_replayable(rng):
    images = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 40)
    transform = Compose(RandomTranslate(2), RandomHorizontalFlip())
    loader = DataLoader(images, labels, 16, seed=3, transform=transform)
    first = [x for x, _ in loader.batches(1)]
    again = [x for x, _ in loader.batches(1)]
    plain = [x for x, _ in DataLoader(images, labels, 16, seed=3).batches(1)]
    for a, b, c in zip(first, again, plain):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_errors():
    with pytest.raises(ValueError, match=r"RandomTranslate\(.*float \(B, C, H, W\).*\(3, 4\)"):
        RandomTranslate()(np.zeros((3, 4), np.float32), np.random.default_rng())
    with pytest.raises(ValueError, match="float"):
        RandomHorizontalFlip()(np.zeros((1, 1, 2, 2), np.uint8), np.random.default_rng())
    with pytest.raises(ValueError, match="padding_mode"):
        RandomTranslate(2, padding_mode="wrap")
    with pytest.raises(ValueError, match="max_shift"):
        RandomTranslate(-1)
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(2.0)
    with pytest.raises(ValueError, match="scale"):
        RandomErasing(scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="unknown transform 'Rotate'"):
        augment.build({"type": "Rotate"})
    with pytest.raises(ValueError, match="RandomErasing.*unexpected keyword"):
        augment.build({"type": "RandomErasing", "config": {"prob": 0.5}})
    with pytest.raises(TypeError, match="not a transform"):
        Compose(3)
