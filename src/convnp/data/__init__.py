"""Data: IDX files, the bundled and downloadable data sets, mini-batch loading and
augmentation."""

from convnp.data import augment
from convnp.data.augment import Compose, RandomErasing, RandomHorizontalFlip, RandomTranslate
from convnp.data.datasets import (
    DATASETS,
    SOURCES,
    Dataset,
    DatasetNotFoundError,
    cache_dir,
    load_dataset,
)
from convnp.data.download import DownloadError, RemoteFile, Source, download_file, fetch
from convnp.data.idx import read_idx, write_idx
from convnp.data.loader import DataLoader, channel_stats, default_val_size, train_val_split

__all__ = [
    "augment",
    "Compose",
    "RandomErasing",
    "RandomHorizontalFlip",
    "RandomTranslate",
    "DATASETS",
    "SOURCES",
    "DataLoader",
    "Dataset",
    "DatasetNotFoundError",
    "DownloadError",
    "RemoteFile",
    "Source",
    "cache_dir",
    "channel_stats",
    "download_file",
    "fetch",
    "load_dataset",
    "read_idx",
    "train_val_split",
    "default_val_size",
    "write_idx",
]
