"""Data augmentation on whole batches, for ``DataLoader(transform=...)``.

Every transform is a callable ``t(x, rng) -> x`` on a float (B, C, H, W) batch that draws
its randomness from the generator it is given (the loader passes the epoch's generator, so
an epoch stays a pure function of (seed, epoch)) and returns a new array of the same shape
and dtype. Each one is vectorised over the batch: the per-image random choices are drawn as
arrays and applied with one gather or one ``np.where``, never a loop over images.

``config()`` gives a transform's constructor arguments, ``describe(t)`` the JSON-able
``{"type": ..., "config": ...}`` of a transform or a Compose, and ``build(spec)`` turns
that description (or a list of them) back into a transform, so a run can record its
augmentation and a recipe can name one (``Recipe.extra["augment"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_PAD_MODES = ("constant", "edge", "reflect")


def _check_batch(owner: Any, x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{owner!r}: expected a float (B, C, H, W) batch, got {got}")
    return x


def _check_probability(owner: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{owner}: p must be in [0, 1], got {p}")
    return float(p)


class _Transform:
    """Shared repr: ``Name(key=value, ...)`` from config()."""

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.config().items())
        return f"{type(self).__name__}({arguments})"


class RandomTranslate(_Transform):
    """Shift each image by a random whole number of pixels: pad, then crop (torchvision's
    ``RandomCrop(size, padding)``).

    The batch is padded by ``max_shift`` on every side and each image is cropped back to
    H×W at its own offset (dy, dx), each uniform in [−max_shift, max_shift]; one gather
    from a sliding-window view does every crop at once.

    Args:
        max_shift: largest shift in pixels along each axis.
        padding_mode: "constant" (fill with ``fill``), "edge" (repeat the border pixel,
            which reproduces a uniform background whatever the input normalisation) or
            "reflect".
        fill: the value for "constant", in the batch's (normalised) units.
    """

    def __init__(self, max_shift: int = 2, padding_mode: str = "constant", fill: float = 0.0):
        if int(max_shift) < 0:
            raise ValueError(f"RandomTranslate: max_shift must be >= 0, got {max_shift}")
        if padding_mode not in _PAD_MODES:
            raise ValueError(
                f"RandomTranslate: padding_mode must be one of {_PAD_MODES}, got {padding_mode!r}"
            )
        self.max_shift = int(max_shift)
        self.padding_mode = padding_mode
        self.fill = float(fill)

    def config(self) -> dict[str, Any]:
        return {"max_shift": self.max_shift, "padding_mode": self.padding_mode, "fill": self.fill}

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _check_batch(self, x)
        s = self.max_shift
        height, width = x.shape[2:]
        if s == 0:
            return x.copy()
        pads = ((0, 0), (0, 0), (s, s), (s, s))
        if self.padding_mode == "constant":
            padded = np.pad(x, pads, mode="constant", constant_values=self.fill)
        else:
            padded = np.pad(x, pads, mode=self.padding_mode)
        # crops[b, c, i, j] is the H×W window whose top-left corner is (i, j)
        crops = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(2, 3))
        top = rng.integers(0, 2 * s + 1, size=len(x))  # dy + s
        left = rng.integers(0, 2 * s + 1, size=len(x))  # dx + s
        batch = np.arange(len(x))
        return crops[batch, :, top, left]  # advanced indices first: (B, C, H, W)


class RandomHorizontalFlip(_Transform):
    """Mirror each image left-right with probability p.

    Args:
        p: probability of flipping an image.
    """

    def __init__(self, p: float = 0.5):
        self.p = _check_probability("RandomHorizontalFlip", p)

    def config(self) -> dict[str, Any]:
        return {"p": self.p}

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _check_batch(self, x)
        flip = rng.random(len(x)) < self.p
        return np.where(flip[:, None, None, None], x[..., ::-1], x)


class RandomErasing(_Transform):
    """Blank a random rectangle in each image with probability p (Zhong et al., 2017;
    torchvision's ``RandomErasing``).

    The rectangle's area is a fraction of the image drawn uniformly from ``scale`` and its
    aspect ratio h/w log-uniformly from ``ratio``; its position is uniform over the places
    where it fits. Unlike torchvision, which retries up to 10 times when a draw does not
    fit and then gives up, a draw too tall or wide is clipped to the image, so every
    selected image is erased (no per-image retry loop).

    Args:
        p: probability of erasing an image.
        scale: (min, max) erased area as a fraction of H·W.
        ratio: (min, max) aspect ratio h/w of the rectangle.
        value: what the rectangle is filled with, in the batch's (normalised) units.
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.33),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float = 0.0,
    ):
        self.p = _check_probability("RandomErasing", p)
        self.scale = tuple(float(v) for v in scale)
        self.ratio = tuple(float(v) for v in ratio)
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"RandomErasing: need 0 < scale[0] <= scale[1] <= 1, got {scale}")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"RandomErasing: need 0 < ratio[0] <= ratio[1], got {ratio}")
        self.value = float(value)

    def config(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "value": self.value,
        }

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _check_batch(self, x)
        batch, height, width = len(x), x.shape[2], x.shape[3]
        erase = rng.random(batch) < self.p
        area = rng.uniform(*self.scale, size=batch) * height * width
        aspect = np.exp(rng.uniform(*np.log(self.ratio), size=batch))
        h = np.clip(np.rint(np.sqrt(area * aspect)), 1, height).astype(np.intp)
        w = np.clip(np.rint(np.sqrt(area / aspect)), 1, width).astype(np.intp)
        top = np.floor(rng.random(batch) * (height - h + 1)).astype(np.intp)
        left = np.floor(rng.random(batch) * (width - w + 1)).astype(np.intp)
        rows = np.arange(height)
        cols = np.arange(width)
        in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (B, H)
        in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (B, W)
        inside = in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]
        return np.where(inside[:, None], x.dtype.type(self.value), x)


class Compose(_Transform):
    """Apply transforms in order, each with the same generator (torchvision's Compose)."""

    def __init__(self, *transforms: Callable[[np.ndarray, np.random.Generator], np.ndarray]):
        for transform in transforms:
            if not callable(transform):
                raise TypeError(f"Compose: {transform!r} is not a transform")
        self.transforms = list(transforms)

    def config(self) -> dict[str, Any]:
        return {"transforms": [describe(transform) for transform in self.transforms]}

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(transform) for transform in self.transforms)})"

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for transform in self.transforms:
            x = transform(x, rng)
        return x


TRANSFORMS: dict[str, type[_Transform]] = {
    "RandomTranslate": RandomTranslate,
    "RandomHorizontalFlip": RandomHorizontalFlip,
    "RandomErasing": RandomErasing,
}


def describe(transform: Any) -> dict[str, Any]:
    """``{"type": ..., "config": ...}`` of a transform (a Compose lists its parts)."""
    if not isinstance(transform, _Transform):
        raise ValueError(f"describe: {transform!r} is not a convnp.data.augment transform")
    return {"type": type(transform).__name__, "config": transform.config()}


def build(spec: dict[str, Any] | list[dict[str, Any]]) -> _Transform:
    """Rebuild a transform from ``describe`` output; a list of them becomes a Compose.

    Example: ``build([{"type": "RandomTranslate", "config": {"max_shift": 2}},
    {"type": "RandomHorizontalFlip"}])``; a missing "config" means the defaults.
    """
    if isinstance(spec, list):
        return Compose(*(build(entry) for entry in spec))
    if not isinstance(spec, dict) or not isinstance(spec.get("config", {}), dict):
        raise ValueError(
            f"augment.build: expected {{'type': ..., 'config': {{...}}}}, got {spec!r}"
        )
    name = spec.get("type")
    config = dict(spec.get("config", {}))
    if name == "Compose":
        return build(list(config.get("transforms", [])))
    if name not in TRANSFORMS:
        raise ValueError(
            f"augment.build: unknown transform {name!r}; known: Compose, {', '.join(TRANSFORMS)}"
        )
    try:
        return TRANSFORMS[name](**config)
    except TypeError as error:
        raise ValueError(f"augment.build: {name}: {error}") from None
