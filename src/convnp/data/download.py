"""Download data files with SHA-256 verification, never leaving a partial file behind.

Each file is streamed into a temporary file in the target folder, hashed on the way,
checked against its published size and SHA-256, and only then renamed to its final
name with ``os.replace`` (atomic on one file system). A file under its final name has
therefore always been verified, and an interrupted download leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 16
_USER_AGENT = "convnp"


class DownloadError(OSError):
    """A file could not be fetched from any mirror (network, HTTP status, truncated body)."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name under a mirror's base URL, SHA-256 and size in bytes."""

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Source:
    """Where a data set's files can be downloaded: base URLs tried in order, and the files."""

    mirrors: tuple[str, ...]
    files: tuple[RemoteFile, ...]

    def __post_init__(self) -> None:
        bad = [base for base in self.mirrors if not base.endswith("/")]
        if bad:
            raise ValueError(f"Source: mirror base URLs must end with '/': {bad}")


def download_file(
    url: str, dest: Path, expected: RemoteFile, *, timeout: float = 30.0, progress: bool = True
) -> Path:
    """Download ``url`` to ``dest``, verifying size and SHA-256 before the rename.

    Args:
        url: the address.
        dest: the final path; its folder must exist.
        expected: the published size and digest.
        timeout: seconds to wait on the connection (per blocking operation).
        progress: show a tqdm progress bar on stderr.

    Returns:
        ``dest``.

    Raises:
        DownloadError: the connection failed, the server answered an HTTP error, or it
            closed the connection before sending the Content-Length it announced.
        ValueError: the bytes received are not the published file (size or SHA-256
            differ); the message names the URL and both digests.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size = _stream(url, out, expected, timeout, progress)
        if size != expected.size or digest != expected.sha256:
            raise ValueError(
                f"{url}: checksum mismatch: expected SHA-256 {expected.sha256} "
                f"({expected.size} bytes), got {digest} ({size} bytes)"
            )
        os.replace(tmp_name, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)  # still there only if something failed
    return dest


def _stream(
    url: str, out: BinaryIO, expected: RemoteFile, timeout: float, progress: bool
) -> tuple[str, int]:
    """Copy the body of ``url`` into ``out``; return (sha256 hex digest, bytes received)."""
    # imported here, not with the package: urllib's HTTP, TLS and e-mail modules add ~8 MB
    # to every process, and a training rank that never downloads should not carry them
    import http.client
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    sha = hashlib.sha256()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with (
            urllib.request.urlopen(request, timeout=timeout) as response,
            tqdm(
                total=expected.size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=expected.name,
                disable=not progress,
            ) as bar,
        ):
            announced = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > expected.size:  # never store more than the published size
                    raise ValueError(
                        f"{url}: server sent more than the published {expected.size} bytes "
                        f"(expected SHA-256 {expected.sha256})"
                    )
                sha.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise DownloadError(f"{url}: {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(f"{url}: {type(error).__name__}: {error}") from None
    # http.client returns b"" when a server closes early instead of raising: check here.
    if announced is not None and announced.isdigit() and received < int(announced):
        raise DownloadError(
            f"{url}: connection closed after {received} of {announced} bytes (truncated)"
        )
    return sha.hexdigest(), received


def fetch(
    source: Source,
    dest_dir: str | os.PathLike[str],
    *,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download every file of ``source`` that ``dest_dir`` lacks, trying mirrors in order.

    Files already under their final name in ``dest_dir`` are kept (``download_file`` only
    ever renames verified files into place). A network failure moves on to the next
    mirror; a checksum mismatch raises at once: a mirror serving different bytes is
    reported, never skipped silently.

    Returns:
        ``dest_dir`` as a Path.

    Raises:
        DownloadError: a file failed on every mirror; the message lists each failure.
        ValueError: a downloaded file did not match its published SHA-256.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for remote in source.files:
        dest = dest_dir / remote.name
        if not dest.exists():
            _fetch_one(source.mirrors, remote, dest, timeout, progress)
    return dest_dir


def _fetch_one(
    mirrors: Sequence[str], remote: RemoteFile, dest: Path, timeout: float, progress: bool
) -> None:
    failures = []
    for base in mirrors:
        try:
            download_file(base + remote.name, dest, remote, timeout=timeout, progress=progress)
            return
        except DownloadError as error:
            failures.append(str(error))
    raise DownloadError(f"could not download {remote.name}:\n  " + "\n  ".join(failures))
