"""Data: IDX files, the bundled and downloadable data sets, and mini-batch loading."""

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
from convnp.data.loader import DataLoader, channel_stats

__all__ = [
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
    "write_idx",
]
