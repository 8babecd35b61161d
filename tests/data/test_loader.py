"""DataLoader: batches, normalisation, replayable epochs, transforms and input checks."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from convnp.data.loader import DataLoader, channel_stats, default_val_size, train_val_split

N = 50


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    """Image i is filled with the value 5*i (all distinct uint8), label i identifies it."""
    images = np.broadcast_to(
        (5 * np.arange(N, dtype=np.uint8))[:, None, None, None], (N, 1, 3, 2)
    ).copy()
    return images, np.arange(N)


def _epoch(loader: DataLoader, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ts = zip(*loader.batches(epoch))
    return np.concatenate(xs), np.concatenate(ts)


@pytest.mark.parametrize(
    ("batch_size", "drop_last", "sizes"),
    [
        (16, False, [16, 16, 16, 2]),
        (16, True, [16, 16, 16]),
        (50, False, [50]),
        (64, False, [50]),
        (64, True, []),
        (1, False, [1] * 50),
    ],
)
def test_batch_sizes_and_len(data, batch_size, drop_last, sizes):
    loader = DataLoader(*data, batch_size=batch_size, drop_last=drop_last, seed=0)
    batches = list(loader)
    assert [len(t) for _, t in batches] == sizes
    assert len(loader) == len(sizes)
    for x, t in batches:
        assert x.dtype == np.float32 and x.shape == (len(t), 1, 3, 2)
        assert t.dtype == np.int64 and t.shape == (len(t),)


def test_each_epoch_visits_every_image_once_with_its_label(data):
    images, labels = data
    loader = DataLoader(images, labels, batch_size=7, seed=3)
    x, t = _epoch(loader, 0)
    assert sorted(t) == list(range(N)) and not np.array_equal(t, np.arange(N))
    np.testing.assert_array_equal(x, images[t].astype(np.float32) / np.float32(255))


def test_no_shuffle_keeps_the_order(data):
    x, t = _epoch(DataLoader(*data, batch_size=8, shuffle=False, seed=0), 4)
    np.testing.assert_array_equal(t, np.arange(N))


def test_unit_maps_0_and_255_exactly():
    images = np.array([0, 1, 128, 254, 255], np.uint8).reshape(5, 1, 1, 1)
    for dtype in (np.float32, np.float64):
        ((x, _),) = DataLoader(images, np.zeros(5, int), batch_size=5, shuffle=False, dtype=dtype)
        assert x.dtype == dtype
        assert x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_array_equal(x.ravel(), images.ravel().astype(dtype) / dtype(255))


def test_permutation_is_a_pure_function_of_seed_and_epoch(data):
    loader = DataLoader(*data, batch_size=10, seed=42)
    for epoch in (0, 1, 7):
        expected = np.random.default_rng([42, epoch]).permutation(N)  # the documented rule
        np.testing.assert_array_equal(_epoch(loader, epoch)[1], expected)
    assert not np.array_equal(_epoch(loader, 0)[1], _epoch(loader, 1)[1])


def test_iteration_advances_the_epoch_and_resume_replays_it(data):
    def jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return x + rng.standard_normal(x.shape, dtype=x.dtype)

    uninterrupted = DataLoader(*data, batch_size=9, seed=7, transform=jitter)
    epochs = [[(x.copy(), t.copy()) for x, t in uninterrupted] for _ in range(3)]
    assert uninterrupted.epoch == 3
    resumed = DataLoader(*data, batch_size=9, seed=7, transform=jitter)
    resumed.set_epoch(2)
    for (x0, t0), (x1, t1) in zip(epochs[2], resumed, strict=True):
        np.testing.assert_array_equal(t0, t1)
        np.testing.assert_array_equal(x0, x1)  # augmentation replayed too
    assert resumed.epoch == 3
    assert not np.array_equal(epochs[0][0][0], epochs[1][0][0])


def test_seed_is_drawn_from_rng_when_not_given(data):
    a = DataLoader(*data, rng=np.random.default_rng(1))
    b = DataLoader(*data, rng=np.random.default_rng(1))
    c = DataLoader(*data, rng=np.random.default_rng(2))
    assert a.seed == b.seed != c.seed
    np.testing.assert_array_equal(_epoch(a, 0)[1], _epoch(b, 0)[1])


def test_channel_stats_match_numpy_across_chunks(rng):
    images = 1e6 + rng.standard_normal((37, 3, 4, 5)) * np.array([1.0, 2.0, 3.0])[:, None, None]
    mean, std = channel_stats(images, chunk_size=7)  # 6 merges, values far from 0
    np.testing.assert_allclose(mean, images.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(std, images.std(axis=(0, 2, 3)), rtol=1e-9)
    u8 = rng.integers(0, 256, (100, 2, 6, 6), dtype=np.uint8)
    mean, std = channel_stats(u8, chunk_size=32)
    np.testing.assert_allclose(mean, u8.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, u8.std(axis=(0, 2, 3)), rtol=1e-12)


def test_standardize_gives_zero_mean_unit_variance_per_channel(rng):
    images = rng.integers(0, 256, (64, 3, 5, 5), dtype=np.uint8)
    images[:, 1] //= 4  # channels with different statistics
    loader = DataLoader(
        images, np.zeros(64, int), batch_size=10, normalize="standardize", dtype=np.float64, seed=0
    )
    x, _ = _epoch(loader, 0)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(loader.mean, images.mean(axis=(0, 2, 3)), rtol=1e-12)


def test_test_loader_uses_the_training_statistics(rng):
    train = rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    test = rng.integers(0, 100, (12, 1, 4, 4), dtype=np.uint8)
    fitted = DataLoader(train, np.zeros(40, int), normalize="standardize", seed=0)
    loader = DataLoader(
        test,
        np.zeros(12, int),
        batch_size=12,
        shuffle=False,
        normalize="standardize",
        mean=fitted.mean,
        std=fitted.std,
    )
    ((x, _),) = loader
    expected = (test.astype(np.float32) - np.float32(fitted.mean[0])) / np.float32(fitted.std[0])
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    assert abs(x.mean()) > 0.5  # the test set's own statistics were not used


def test_transform_gets_the_float_batch_and_a_generator(data):
    seen = []

    def flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seen.append((x.dtype, x.max() <= 1.0, isinstance(rng, np.random.Generator)))
        return x[..., ::-1] * np.float32(2)

    x, t = _epoch(DataLoader(*data, batch_size=20, seed=0, transform=flip), 0)
    assert seen == [(np.dtype(np.float32), True, True)] * 3
    np.testing.assert_array_equal(x, data[0][t].astype(np.float32) / np.float32(255) * 2)


@pytest.mark.parametrize(
    "bad",
    [
        lambda x, rng: x.astype(np.float64),
        lambda x, rng: x[1:],
        lambda x, rng: list(x),
    ],
    ids=["dtype", "length", "not-array"],
)
def test_transform_output_is_checked(data, bad):
    with pytest.raises(ValueError, match="transform must return a float32 array"):
        next(iter(DataLoader(*data, transform=bad)))


def _rank_slice(rank: int, ranks: int):
    return lambda n: slice(n * rank // ranks, n * (rank + 1) // ranks)


@pytest.mark.parametrize("augmented", [False, True])
@pytest.mark.parametrize("ranks", [2, 3])
def test_sharded_gives_each_rank_its_rows_of_every_batch(rng, augmented, ranks):
    """Each rank's x is its slice of the one-process batch (augmented or not, a split read
    in place), the labels are the whole batch's, and the epoch advances as iter() does."""
    images = rng.integers(0, 256, (60, 2, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 60)

    def jitter(x: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        return x + generator.standard_normal(x.shape).astype(x.dtype)

    settings = dict(batch_size=16, seed=3, normalize="standardize", indices=np.arange(3, 60, 2),
                    transform=jitter if augmented else None)  # fmt: skip
    whole = list(DataLoader(images, labels, **settings))
    assert [len(t) for _, t in whole] == [16, 13]
    for rank in range(ranks):
        loader = DataLoader(images, labels, **settings)
        parts = list(loader.sharded(_rank_slice(rank, ranks)))
        assert loader.epoch == 1
        assert len(parts) == len(whole)
        for (x, t), (x_whole, t_whole) in zip(parts, whole, strict=True):
            np.testing.assert_array_equal(t, t_whole)
            np.testing.assert_array_equal(x, x_whole[_rank_slice(rank, ranks)(len(t))])


def test_sharded_gathers_only_the_rank_rows():
    images = np.zeros((4000, 1, 28, 28), np.uint8)
    loader = DataLoader(images, np.zeros(4000, np.int64), batch_size=2000, seed=0)
    tracemalloc.start()
    try:
        for x, t in loader.sharded(_rank_slice(1, 4)):
            assert len(x) == 500 and len(t) == 2000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a whole float32 batch is 6.3 MB; a slice 1.6 MB (two live: the loop holds the last)
    assert peak < 2000 * 784 * 4


def test_an_epoch_copies_only_a_batch_at_a_time():
    images = np.zeros((20000, 1, 28, 28), np.uint8)  # 15.7 MB; 63 MB as float32
    loader = DataLoader(images, np.zeros(20000, np.int64), batch_size=100, seed=0)
    tracemalloc.start()
    try:
        for _ in loader:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20


@pytest.mark.parametrize("normalize", ["unit", "standardize"])
def test_indices_iterate_a_split_exactly_as_its_copy(rng, normalize):
    """A loader over ``images[indices]`` read in place gives the batches, statistics and
    length of one given the copies, every epoch, augmented or not."""
    images = rng.integers(0, 256, (60, 2, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 60)
    split = np.sort(rng.choice(60, 37, replace=False))

    def jitter(x: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        return x + generator.standard_normal(x.shape).astype(x.dtype)

    settings = dict(batch_size=8, seed=3, normalize=normalize, transform=jitter)
    copied = DataLoader(images[split], labels[split], **settings)
    in_place = DataLoader(images, labels, indices=split, **settings)
    assert len(in_place) == len(copied) == 5
    if normalize == "standardize":
        np.testing.assert_array_equal(in_place.mean, copied.mean)
        np.testing.assert_array_equal(in_place.std, copied.std)
    for epoch in (0, 1):
        for (x, t), (x_copy, t_copy) in zip(in_place.batches(epoch), copied.batches(epoch),
                                            strict=True):  # fmt: skip
            np.testing.assert_array_equal(x, x_copy)
            np.testing.assert_array_equal(t, t_copy)


def test_indices_do_not_copy_the_images():
    images = np.zeros((20000, 1, 28, 28), np.uint8)  # 15.7 MB
    tracemalloc.start()
    try:
        loader = DataLoader(images, np.zeros(20000, np.int64), batch_size=100, seed=0,
                            indices=np.arange(0, 20000, 2))  # fmt: skip
        for _ in loader:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # a split copy would be 7.8 MB


@pytest.mark.parametrize(
    ("images", "labels", "kwargs", "message"),
    [
        (np.zeros((4, 1, 2, 2)), np.zeros(3, int), {}, r"4 images \(4, 1, 2, 2\) but 3 labels"),
        (
            np.zeros((4, 4), np.uint8),
            np.zeros(4, int),
            {},
            r"\(N, C, \*spatial\), got uint8 \(4, 4\)",
        ),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4), {}, r"labels must be integer .* float64"),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros((4, 1), int), {}, r"labels must be integer"),
        (np.zeros((4, 1, 2, 2), bool), np.zeros(4, int), {}, "images must be numeric"),
        ([[0]], np.zeros(1, int), {}, "must be NumPy arrays, got list"),
        (np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, int), {}, "normalize='unit' maps uint8"),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, int), {"batch_size": 0}, "batch_size"),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, int), {"normalize": "minmax"}, "normalize"),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, int), {"dtype": np.int32}, "float dtype"),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, int), {"seed": -1}, "non-negative"),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, int), {"mean": 0.5}, "only to normalize"),
        (
            np.zeros((4, 1, 2, 2), np.uint8),
            np.zeros(4, int),
            {"normalize": "standardize", "mean": 0.5},
            "both mean and std",
        ),
        (
            np.zeros((4, 1, 2, 2), np.uint8),
            np.zeros(4, int),
            {"normalize": "standardize"},
            "std must be positive",
        ),
        (
            np.zeros((4, 2, 2, 2), np.uint8),
            np.zeros(4, int),
            {"normalize": "standardize", "mean": [1, 2], "std": [1, 0]},
            "std must be positive",
        ),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, int), {"indices": [0.5]}, "indices must"),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, int), {"indices": [[0]]}, "indices must"),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, int), {"indices": [4]}, r"in \[0, 4\)"),
        (np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, int), {"indices": [-1]}, r"in \[0, 4\)"),
    ],
)
def test_bad_arguments_raise_value_error(images, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(images, labels, **kwargs)


def test_set_epoch_validates(data):
    loader = DataLoader(*data)
    with pytest.raises(ValueError, match="epoch"):
        loader.set_epoch(-1)


def test_repr(data):
    assert repr(DataLoader(*data, batch_size=8, seed=5)) == (
        "DataLoader(n=50, batch_size=8, shuffle=True, drop_last=False, normalize='unit', "
        "dtype=float32, seed=5)"
    )


@pytest.mark.parametrize("shape", [(6, 2, 5), (6, 2, 3, 4, 5)])
def test_signals_and_volumes_batch_and_standardize_per_channel(shape):
    """1-D (N, C, L) and 3-D (N, C, D, H, W) data load like images (Conv1d/Conv3d inputs)."""
    rng = np.random.default_rng(0)
    data = rng.normal(loc=[3.0, -2.0], scale=[2.0, 0.5], size=(*shape[:1], *shape[2:], 2))
    data = np.moveaxis(data, -1, 1)
    loader = DataLoader(data, np.arange(6), batch_size=4, seed=1, normalize="standardize")
    batches = list(loader)
    assert [x.shape for x, _ in batches] == [(4, *shape[1:]), (2, *shape[1:])]
    x = np.concatenate([x for x, _ in batches])
    axes = (0, *range(2, len(shape)))
    np.testing.assert_allclose(x.mean(axis=axes), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=axes), 1, atol=1e-5)


# -- the validation split --------------------------------------------------------------------
def _labels() -> np.ndarray:
    """Unbalanced classes: 100, 60, 30, 7 and 3 images, interleaved."""
    labels = np.repeat(np.arange(5), [100, 60, 30, 7, 3])
    return np.random.default_rng(1).permutation(labels)


@pytest.mark.parametrize("val_size", [20, 0.1, 37, 0.5, 1])
def test_train_val_split_is_stratified_and_a_partition(val_size):
    labels = _labels()
    train, val = train_val_split(labels, val_size, seed=3)
    n_val = val_size if isinstance(val_size, int) else int(np.ceil(val_size * len(labels)))
    assert len(val) == n_val and len(train) + len(val) == len(labels)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    # each class contributes its share of n_val, rounded up or down (largest remainder)
    share = n_val * np.bincount(labels) / len(labels)
    got = np.bincount(labels[val], minlength=5)
    assert np.all((got == np.floor(share)) | (got == np.ceil(share))), (got, share)


def test_train_val_split_depends_only_on_the_seed():
    labels = _labels()
    first = train_val_split(labels, 40, seed=7)
    again = train_val_split(labels.copy(), 40, seed=7)
    other = train_val_split(labels, 40, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_train_val_split_of_zero_keeps_every_image_for_training():
    train, val = train_val_split(_labels(), 0, seed=0)
    assert len(val) == 0 and np.array_equal(train, np.arange(200))
    assert len(train_val_split(_labels(), 0.0, seed=0)[1]) == 0


@pytest.mark.parametrize(
    ("val_size", "message"),
    [
        (200, "leaves no training images"),
        (10**9, "leaves no training images"),
        (1.0, r"fraction must lie in \[0, 1\)"),
        (-1, "leaves no training images"),
        (-0.1, "fraction must lie"),
        (float("nan"), "fraction must lie"),
        (True, "a count or a fraction"),
        ("10", "a count or a fraction"),
    ],
)
def test_train_val_split_rejects_impossible_sizes(val_size, message):
    with pytest.raises(ValueError, match=message):
        train_val_split(_labels(), val_size, seed=0)


def test_train_val_split_of_no_images_is_an_error():
    with pytest.raises(ValueError, match="no training images"):
        train_val_split(np.zeros(0, dtype=np.int64), 0, seed=0)


def test_default_val_size_is_ten_percent_capped_at_5000():
    assert default_val_size(4000) == 400
    assert default_val_size(60000) == 5000
    assert default_val_size(7) == 1
