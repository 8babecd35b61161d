"""Images to classify, read from untrusted files: NumPy ``.npy`` arrays or (with Pillow) any
format Pillow reads (PNG, JPEG, ...).

``read_images(path, input_shape)`` returns a uint8 batch (N, C, H, W) at the model's input
shape, as the training data was stored (``DataLoader`` then normalises it the same way), or
raises ``ImageFileError`` (a ValueError) whose message starts with the file's path:

* ``.npy``: loaded without pickle (object arrays are refused) and memory-mapped first, so a
  header that declares more data than the file holds fails before anything is allocated.
  Shapes (H, W), (C, H, W) and (N, C, H, W) are one image or a batch (and (N, H, W) is a
  batch when C = 1). Values are integers in [0, 255] or finite floats, floats all in
  [0, 1] being scaled by 255 (per image). Empty, string, record, datetime, complex or
  non-finite arrays, and other sizes than the model's, are errors.
* Other files go through Pillow: an image of more than ``MAX_IMAGE_PIXELS`` pixels (a
  decompression bomb) is refused from its header, before decoding; the first frame is
  converted to greyscale or RGB and resized to the model's input size, and each such change
  is returned as a note for the caller to show.
"""

from __future__ import annotations

import os
import tokenize
import warnings
from pathlib import Path

import numpy as np

# 64 Mi pixels (a 8192 x 8192 photo): above it a file is refused before decoding; lower
# than Pillow's own bomb limit (89 Mi), which is a process-wide setting we leave alone.
MAX_IMAGE_PIXELS = 2**26
_PIXEL_KINDS = "biuf"  # bool, signed and unsigned ints, floats


class ImageFileError(ValueError):
    """An image file that cannot be classified; the message starts with its path."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


def read_images(
    path: str | os.PathLike[str], input_shape: tuple[int, ...]
) -> tuple[np.ndarray, list[str]]:
    """A uint8 batch (N, C, H, W) for a model taking ``input_shape`` = (C, H, W), and notes
    on conversions made (greyscale, resizing). Errors: ``ImageFileError``, FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if len(input_shape) != 3:
        raise ImageFileError(path, f"the model takes inputs of shape {input_shape}, not images")
    if path.suffix.lower() == ".npy":
        return _npy_batch(path, _load_npy(path), tuple(input_shape)), []
    return _pillow_image(path, tuple(input_shape))


def _load_npy(path: Path) -> np.ndarray:
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    # NumPy parses the header as a Python literal: a damaged one raises tokenizer and
    # parser errors too (found by tests/test_fuzz_images.py)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, tokenize.TokenError) as error:
        raise ImageFileError(path, f"not a readable .npy array ({error})") from None
    if not isinstance(mapped, np.ndarray):
        raise ImageFileError(path, "not a .npy array")
    if mapped.dtype.kind not in _PIXEL_KINDS or mapped.dtype.fields is not None:
        raise ImageFileError(
            path, f"array of dtype {mapped.dtype}; images are numbers (integers or floats)"
        )
    if mapped.size == 0:
        raise ImageFileError(path, f"empty array of shape {mapped.shape}")
    return np.array(mapped)  # a copy in memory; the file's size bounds it


def _npy_batch(path: Path, array: np.ndarray, input_shape: tuple[int, int, int]) -> np.ndarray:
    """(H, W), (C, H, W), (N, C, H, W) or, for C = 1, (N, H, W) as a uint8 (N, C, H, W) batch."""
    channels, height, width = input_shape
    if array.ndim == 2:
        array = array[None, None] if channels == 1 else array
    elif array.ndim == 3:
        array = array[None] if array.shape[0] == channels else array[:, None]
    if array.ndim != 4 or array.shape[1:] != input_shape:
        raise ImageFileError(
            path,
            f"array of shape {array.shape}; the model takes {channels}x{height}x{width} images: "
            f"(H, W), (C, H, W) or a batch (N, C, H, W)",
        )
    if array.dtype.kind == "f":
        finite = np.isfinite(array).all(axis=(1, 2, 3))
        if not finite.all():
            raise ImageFileError(path, f"image {int(np.argmin(finite))} contains NaN or inf")
        in_unit_range = array.max(axis=(1, 2, 3), initial=-np.inf) <= 1.0
        array = np.where(in_unit_range[:, None, None, None], array * 255.0, array)
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise ImageFileError(
            path, f"values span [{low}, {high}]; pixels lie in [0, 255] (or floats in [0, 1])"
        )
    return np.rint(array).astype(np.uint8)


def _pillow_image(path: Path, input_shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    try:
        from PIL import Image
    except ImportError:
        raise ImageFileError(
            path, "reading images other than .npy needs Pillow: pip install 'convnp[image]'"
        ) from None
    channels, height, width = input_shape
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ImageFileError(path, f"the model takes {channels}-channel inputs; use .npy arrays")
    notes = []
    # Pillow raises many exception types for corrupt files (OSError, SyntaxError, ValueError,
    # struct.error, its DecompressionBombError ...): each is this file's problem.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        pixels = image.size[0] * image.size[1]
        if pixels > MAX_IMAGE_PIXELS:
            raise ImageFileError(
                path,
                f"{image.size[0]}x{image.size[1]} pixels, more than {MAX_IMAGE_PIXELS:,} "
                "(a decompression bomb?)",
            )
        image.load()
        if image.mode != mode:
            notes.append(f"converted from {image.mode} to {mode}")
            image = image.convert(mode)
        if image.size != (width, height):
            notes.append(f"resized from {image.size[0]}x{image.size[1]} to {width}x{height}")
            image = image.resize((width, height))
        array = np.asarray(image, dtype=np.uint8)
    except ImageFileError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageFileError(path, f"refused as a decompression bomb ({error})") from None
    except Exception as error:
        raise ImageFileError(path, f"cannot read image ({type(error).__name__}: {error})") from None
    return array.reshape(height, width, channels).transpose(2, 0, 1)[None].copy(), notes
