"""Mini-batches of float images and int64 labels, each epoch replayable from (seed, epoch).

Images stay in their stored dtype (uint8 for every convnp data set); each batch is
gathered with one fancy index and converted on its own, so an epoch never copies the
whole data set. A split of the images (``indices``) is iterated where it lies, not copied.

Replay: epoch e uses ``np.random.default_rng([seed, e])`` for its permutation and then
for its ``transform`` calls, so the batches of epoch e are a pure function of
(seed, e, data). A run resumed at epoch e (``loader.set_epoch(e)``, or
``loader.batches(e)``) sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np

Normalize = Literal["unit", "standardize"] | None
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
_NORMALIZE = ("unit", "standardize", None)


def channel_stats(
    images: np.ndarray, *, chunk_size: int = 1024, indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of (N, C, *spatial) samples
    (of ``images[indices]`` when ``indices`` is given, without copying them).

    Streams over chunks of ``chunk_size`` images in float64, merging each chunk's mean
    and sum of squared deviations M2 with Chan et al.'s pairwise update
        δ = mean_b − mean_a,  mean = mean_a + δ·n_b/n,  M2 = M2_a + M2_b + δ²·n_a·n_b/n,
    so memory stays bounded and no E[x²] − E[x]² cancellation occurs.

    Returns:
        (mean, std), float64 arrays of shape (C,), in the images' own units
        (0..255 for uint8).
    """
    n_images = len(images) if indices is None else len(indices)
    if images.ndim < 3 or n_images == 0:
        raise ValueError(f"channel_stats: expected non-empty (N, C, *spatial), got {images.shape}")
    reduce_axes = (0, *range(2, images.ndim))  # every axis but the channel
    per_channel = (-1,) + (1,) * (images.ndim - 2)
    channels = images.shape[1]
    count = 0
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    for start in range(0, n_images, chunk_size):
        rows = slice(start, start + chunk_size)
        chunk = (images[rows] if indices is None else images[indices[rows]]).astype(np.float64)
        n_b = chunk.size // channels
        mean_b = chunk.mean(axis=reduce_axes)
        m2_b = np.square(chunk - mean_b.reshape(per_channel)).sum(axis=reduce_axes)
        delta = mean_b - mean
        total = count + n_b
        mean += delta * (n_b / total)
        m2 += m2_b + np.square(delta) * (count * n_b / total)
        count = total
    return mean, np.sqrt(m2 / count)


class DataLoader:
    """Iterate over (x, labels) mini-batches: x is ``dtype`` (B, C, *spatial), labels int64 (B,).

    Images are (N, C, H, W); 1-D signals (N, C, L) and volumes (N, C, D, H, W) work alike.

    Args:
        images: (N, C, *spatial) array, usually uint8; kept as is (not copied).
        labels: (N,) integer class indices.
        indices: iterate over ``images[indices]`` only (a training or validation split),
            without copying those images: batches are gathered from ``images`` itself.
            The loader then behaves exactly as one given the copies.
        batch_size: images per batch; the last batch is smaller unless ``drop_last``.
        shuffle: visit the images in a fresh permutation each epoch.
        rng: draws ``seed`` when ``seed`` is None (once, at construction).
        seed: epoch e's permutation and transform randomness come from
            ``np.random.default_rng([seed, e])``; record it to replay a run.
        drop_last: skip the final incomplete batch.
        normalize: ``"unit"`` maps uint8 0..255 to [0, 1]; ``"standardize"`` computes
            (x − mean) / std per channel, zero mean and unit variance, which speeds up
            convergence (SPEC §1; LeCun et al., "Efficient BackProp"); None only casts.
        mean, std: per-channel statistics for ``"standardize"`` in the images' units.
            Left None, they are computed from ``images`` with ``channel_stats``; pass
            the training loader's ``mean``/``std`` to the test loader.
        dtype: float dtype of x (torch's name).
        transform: optional per-batch augmentation ``f(x, rng) -> x`` applied after
            normalisation, with the epoch's generator; it must keep B and dtype.

    Each ``iter(loader)`` runs epoch ``loader.epoch`` and advances it by one;
    ``set_epoch`` moves it (e.g. when resuming), ``batches(e)`` runs epoch e without
    touching it. ``len(loader)`` is the number of batches per epoch. ``sharded(shard)``
    is ``iter(loader)`` for one of several data-parallel ranks: only the rank's rows of
    each batch's images.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 64,
        *,
        shuffle: bool = True,
        rng: np.random.Generator | None = None,
        seed: int | None = None,
        drop_last: bool = False,
        normalize: Normalize = "unit",
        mean: Any = None,
        std: Any = None,
        dtype: Any = np.float32,
        transform: Transform | None = None,
        indices: np.ndarray | None = None,
    ) -> None:
        _check_data(images, labels)
        if indices is not None:
            indices = _checked_indices(indices, len(images))
            labels = labels[indices]
        if not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if normalize not in _NORMALIZE:
            raise ValueError(
                f"DataLoader: normalize must be one of {_NORMALIZE}, got {normalize!r}"
            )
        if not np.issubdtype(np.dtype(dtype), np.floating):
            raise ValueError(f"DataLoader: dtype must be a float dtype, got {np.dtype(dtype)}")
        if seed is None:
            seed = int((rng or np.random.default_rng()).integers(2**63))
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"DataLoader: seed must be a non-negative int, got {seed!r}")
        self.images = images
        self.indices = indices  # None: all of images, in order
        self.labels = labels.astype(np.int64, copy=False)  # of the iterated images
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.normalize = normalize
        self.dtype = np.dtype(dtype)
        self.transform = transform
        self.epoch = 0
        self.mean, self.std = self._statistics(mean, std)
        self._shift, self._divisor = self._affine()

    def _statistics(self, mean: Any, std: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-channel (mean, std) for ``"standardize"``, float64 (C,); (None, None) otherwise."""
        if self.normalize != "standardize":
            if mean is not None or std is not None:
                raise ValueError(
                    f"DataLoader: mean/std apply only to normalize='standardize', "
                    f"not {self.normalize!r}"
                )
            return None, None
        if (mean is None) != (std is None):
            raise ValueError("DataLoader: give both mean and std, or neither (computed)")
        if mean is None:
            mean, std = channel_stats(self.images, indices=self.indices)
        channels = self.images.shape[1]
        mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (channels,)).copy()
        std = np.broadcast_to(np.asarray(std, dtype=np.float64), (channels,)).copy()
        if not np.all(std > 0):
            raise ValueError(f"DataLoader: std must be positive in every channel, got {std}")
        return mean, std

    def _affine(self) -> tuple[np.ndarray | None, np.ndarray | float | None]:
        """x ← (x − shift) / divisor per channel, in ``dtype``; None skips a step."""
        if self.normalize == "unit":
            if self.images.dtype != np.uint8:
                raise ValueError(
                    f"DataLoader: normalize='unit' maps uint8 0..255 to [0, 1]; images are "
                    f"{self.images.dtype} (use normalize=None or 'standardize')"
                )
            return None, 255.0  # divide, not multiply by 1/255: 255 maps to exactly 1.0
        if self.normalize == "standardize":
            per_channel = (1, -1) + (1,) * (self.images.ndim - 2)
            shift = self.mean.astype(self.dtype).reshape(per_channel)
            return shift, self.std.astype(self.dtype).reshape(per_channel)
        return None, None

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` run epoch ``epoch`` (counted from 0)."""
        if not isinstance(epoch, int | np.integer) or epoch < 0:
            raise ValueError(f"DataLoader: epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.batches(self._next_epoch())

    def sharded(self, shard: Callable[[int], slice]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``iter(loader)`` for one data-parallel rank: each batch of B as (the images of
        rows ``shard(B)`` only, all B labels), so a rank gathers and normalises its own
        slice of every global batch, not the whole batch."""
        return self.batches(self._next_epoch(), shard)

    def _next_epoch(self) -> int:
        epoch = self.epoch
        self.epoch += 1
        return epoch

    def batches(
        self, epoch: int, shard: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of epoch ``epoch``: a pure function of (seed, epoch, data). With
        ``shard``, x holds only the rows ``shard(B)`` of each batch of B (``sharded``)."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.labels)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            rows = index if self.indices is None else self.indices[index]
            part = slice(None) if shard is None else shard(len(index))
            if self.transform is None:
                x = self._normalized(rows[part])
            else:  # drawn for the whole batch, as in one process; then the part is kept
                x = self._apply_transform(self._normalized(rows), rng)[part]
            yield x, self.labels[index]

    def _normalized(self, rows: np.ndarray) -> np.ndarray:
        x = self.images[rows].astype(self.dtype)  # the only copy: these rows
        if self._shift is not None:
            x -= self._shift
        if self._divisor is not None:
            x /= self._divisor
        return x

    def _apply_transform(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = self.transform(x, rng)
        if not isinstance(out, np.ndarray) or len(out) != len(x) or out.dtype != self.dtype:
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(
                f"DataLoader: transform must return a {self.dtype} array with {len(x)} "
                f"images, got {got}"
            )
        return out

    def __repr__(self) -> str:
        return (
            f"DataLoader(n={len(self.labels)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, "
            f"normalize={self.normalize!r}, dtype={self.dtype.name}, seed={self.seed})"
        )


def _checked_indices(indices: Any, n: int) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"DataLoader: indices must be integer (M,), got {indices.dtype} {indices.shape}"
        )
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(
            f"DataLoader: indices must lie in [0, {n}) (the images), got values from "
            f"{indices.min()} to {indices.max()}"
        )
    return indices.astype(np.intp, copy=False)


def _check_data(images: Any, labels: Any) -> None:
    if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
        raise ValueError(
            f"DataLoader: images and labels must be NumPy arrays, got "
            f"{type(images).__name__} and {type(labels).__name__}"
        )
    if images.ndim < 3 or not (
        np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)
    ):
        raise ValueError(
            f"DataLoader: images must be numeric (N, C, *spatial), got {images.dtype} "
            f"{images.shape} (add a channel axis with images[:, None])"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"DataLoader: labels must be integer (N,), got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"DataLoader: {len(images)} images {images.shape} but {len(labels)} labels "
            f"{labels.shape}"
        )


#: ``default_val_size``: 10% of the training images, at most this many (MNIST: 55k/5k).
MAX_DEFAULT_VAL_SIZE = 5000
_SPLIT_STREAM = 0x5E1  # spawn key: the split's randomness is independent of every epoch's


def default_val_size(train_size: int) -> int:
    """The validation images held out by default: 10% of ``train_size``, capped at 5,000."""
    return min(math.ceil(0.1 * train_size), MAX_DEFAULT_VAL_SIZE)


def train_val_split(
    labels: np.ndarray, val_size: int | float, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of a seeded, stratified hold-out split of labelled data.

    ``val_size`` is a count (int, 0 allowed: no validation set) or a fraction in (0, 1) of
    ``len(labels)`` (rounded up, as scikit-learn's ``train_test_split``). Each class gives
    the same share of its images: class k gets ⌊n_val·n_k/n⌋ validation images, and the
    images still missing go to the classes with the largest remainders (ties: lower k
    first). Which images of a class are held out is drawn from ``seed`` (on a stream of its
    own, so it does not coincide with any epoch's shuffle). The result depends only on
    (labels, val_size, seed); both index arrays are sorted.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise ValueError(f"train_val_split: labels must be non-negative integers (N,), got "
                         f"{labels.dtype} {labels.shape}")  # fmt: skip
    n = len(labels)
    if n == 0:
        raise ValueError("train_val_split: there are no training images to split")
    n_val = _val_count(val_size, n)
    counts = np.bincount(labels)
    quotas = n_val * counts / n
    per_class = np.floor(quotas).astype(np.int64)
    by_remainder = np.lexsort((np.arange(len(counts)), -(quotas - per_class)))
    per_class[by_remainder[: n_val - per_class.sum()]] += 1
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_STREAM,)))
    val = np.zeros(n, dtype=bool)
    for k in np.flatnonzero(per_class):  # a loop over classes, not samples
        members = np.flatnonzero(labels == k)
        val[rng.choice(members, size=per_class[k], replace=False)] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def _val_count(val_size: int | float, n: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, int | float | np.number):
        raise ValueError(f"validation size must be a count or a fraction, got {val_size!r}")
    if isinstance(val_size, float | np.floating):
        if not 0.0 <= val_size < 1.0:
            raise ValueError(f"validation fraction must lie in [0, 1), got {val_size}")
        count = math.ceil(val_size * n)
    else:
        count = int(val_size)
    if not 0 <= count < n:
        raise ValueError(
            f"validation size {val_size} leaves no training images: there are {n} "
            f"(give a count below {n} or a fraction below 1)"
        )
    return count
