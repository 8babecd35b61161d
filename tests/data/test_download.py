"""Downloads against a local HTTP server: good file, bad checksum, truncation, 404, fallback."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from convnp.data import datasets
from convnp.data.datasets import DatasetNotFoundError, load_dataset
from convnp.data.download import DownloadError, RemoteFile, Source, download_file, fetch
from convnp.data.idx import write_idx

TIMEOUT = 5.0


@dataclass
class Route:
    body: bytes
    content_length: int | None = None  # None: the true length
    status: int = 200


@dataclass
class Server:
    base: str
    routes: dict[str, Route]
    requests: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: Server = self.server.state  # type: ignore[attr-defined]
        state.requests.append(self.path)
        route = state.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        self.send_response(route.status)
        length = len(route.body) if route.content_length is None else route.content_length
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(route.body)  # HTTP/1.0: the connection closes after this

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    state = Server(base=f"http://127.0.0.1:{httpd.server_address[1]}/", routes={})
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _remote(name: str, body: bytes) -> RemoteFile:
    return RemoteFile(name, hashlib.sha256(body).hexdigest(), len(body))


def _idx_gz(tmp_path: Path, array: np.ndarray) -> bytes:
    path = tmp_path / "tmp.gz"
    write_idx(path, array)
    return path.read_bytes()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_good_file_is_verified_and_renamed(server, tmp_path):
    body = _idx_gz(tmp_path, np.arange(60, dtype=np.uint8))
    server.routes["/good.gz"] = Route(body)
    out = tmp_path / "out"
    out.mkdir()
    dest = download_file(
        server.base + "good.gz",
        out / "good.gz",
        _remote("good.gz", body),
        timeout=TIMEOUT,
        progress=False,
    )
    assert dest.read_bytes() == body
    assert _leftovers(out) == ["good.gz"]


def test_checksum_mismatch_deletes_and_names_url_and_digests(server, tmp_path):
    body = b"not what was published"
    server.routes["/f.gz"] = Route(body)
    wrong = RemoteFile("f.gz", "0" * 64, len(body))
    with pytest.raises(ValueError) as info:
        download_file(
            server.base + "f.gz", tmp_path / "f.gz", wrong, timeout=TIMEOUT, progress=False
        )
    message = str(info.value)
    assert server.base + "f.gz" in message
    assert "0" * 64 in message and hashlib.sha256(body).hexdigest() in message
    assert _leftovers(tmp_path) == []


def test_truncated_transfer_raises_download_error(server, tmp_path):
    body = bytes(range(200))
    server.routes["/t.gz"] = Route(body[:120], content_length=len(body))
    with pytest.raises(DownloadError, match="120 of 200 bytes"):
        download_file(
            server.base + "t.gz",
            tmp_path / "t.gz",
            _remote("t.gz", body),
            timeout=TIMEOUT,
            progress=False,
        )
    assert _leftovers(tmp_path) == []


def test_404_raises_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(
            server.base + "missing.gz",
            tmp_path / "m.gz",
            _remote("m.gz", b"x"),
            timeout=TIMEOUT,
            progress=False,
        )
    assert _leftovers(tmp_path) == []


def test_body_longer_than_published_size_is_refused(server, tmp_path):
    published = b"abc"
    server.routes["/big"] = Route(published + bytes(1 << 20))
    with pytest.raises(ValueError, match="more than the published 3 bytes"):
        download_file(
            server.base + "big",
            tmp_path / "big",
            _remote("big", published),
            timeout=TIMEOUT,
            progress=False,
        )
    assert _leftovers(tmp_path) == []


def test_connection_refused_raises_download_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}"):
        download_file(
            f"http://127.0.0.1:{port}/x",
            tmp_path / "x",
            _remote("x", b"x"),
            timeout=TIMEOUT,
            progress=False,
        )
    assert _leftovers(tmp_path) == []


def test_progress_bar_names_the_file(server, tmp_path, capsys):
    server.routes["/p.bin"] = Route(b"12345")
    download_file(
        server.base + "p.bin",
        tmp_path / "p.bin",
        _remote("p.bin", b"12345"),
        timeout=TIMEOUT,
        progress=True,
    )
    assert "p.bin" in capsys.readouterr().err


def test_fetch_falls_back_to_the_next_mirror_and_skips_present_files(server, tmp_path):
    body = b"payload"
    server.routes["/second/a.gz"] = Route(body)
    source = Source(
        mirrors=(server.base + "first/", server.base + "second/"), files=(_remote("a.gz", body),)
    )
    fetch(source, tmp_path / "cache", timeout=TIMEOUT, progress=False)
    assert (tmp_path / "cache" / "a.gz").read_bytes() == body
    assert server.requests == ["/first/a.gz", "/second/a.gz"]
    fetch(source, tmp_path / "cache", timeout=TIMEOUT, progress=False)
    assert len(server.requests) == 2  # present (and verified when renamed): not fetched again


def test_fetch_reports_every_mirror_when_all_fail(server, tmp_path):
    source = Source(
        mirrors=(server.base + "a/", server.base + "b/"), files=(_remote("x.gz", b"x"),)
    )
    with pytest.raises(DownloadError) as info:
        fetch(source, tmp_path, timeout=TIMEOUT, progress=False)
    assert "/a/x.gz" in str(info.value) and "/b/x.gz" in str(info.value)


def test_fetch_does_not_try_other_mirrors_after_a_checksum_mismatch(server, tmp_path):
    server.routes["/a/x.gz"] = Route(b"y")  # same size, different bytes
    server.routes["/b/x.gz"] = Route(b"x")
    source = Source(
        mirrors=(server.base + "a/", server.base + "b/"), files=(_remote("x.gz", b"x"),)
    )
    with pytest.raises(ValueError, match="checksum mismatch"):
        fetch(source, tmp_path, timeout=TIMEOUT, progress=False)
    assert server.requests == ["/a/x.gz"]


def test_source_requires_base_urls_ending_in_slash():
    with pytest.raises(ValueError, match="end with '/'"):
        Source(mirrors=("http://example.invalid/data",), files=())


# -- load_dataset end to end, with the published sources replaced by the local server -----


@pytest.fixture
def tiny_mnist(server, tmp_path, monkeypatch, write_idx_set) -> dict[str, np.ndarray]:
    """Serve a 6/4-image MNIST look-alike and point SOURCES['mnist'] and the cache at it."""
    arrays = write_idx_set(tmp_path / "served")
    files = []
    for name in arrays:
        body = (tmp_path / "served" / name).read_bytes()
        server.routes[f"/mnist/{name}"] = Route(body)
        files.append(_remote(name, body))
    source = Source(mirrors=(server.base + "mnist/",), files=tuple(files))
    monkeypatch.setattr(datasets, "SOURCES", {**datasets.SOURCES, "mnist": source})
    monkeypatch.setenv("CONVNP_DATA", str(tmp_path / "cache"))
    return arrays


def test_load_dataset_downloads_into_the_cache_then_reads_it(server, tiny_mnist, tmp_path):
    data = load_dataset("mnist", progress=False)
    assert data.train_images.shape == (6, 1, 5, 4) and data.test_images.shape == (4, 1, 5, 4)
    np.testing.assert_array_equal(data.train_images[:, 0], tiny_mnist["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(data.test_labels, tiny_mnist["t10k-labels-idx1-ubyte.gz"])
    assert data.train_labels.dtype == np.int64
    cached = tmp_path / "cache" / "mnist"
    assert _leftovers(cached) == sorted([*tiny_mnist, "decompressed"])  # no temporary files
    assert [name.split(".")[0] for name in _leftovers(cached / "decompressed")] == sorted(
        name.removesuffix(".gz") for name in tiny_mnist
    )
    requests = len(server.requests)
    again = load_dataset("mnist", download=False)
    np.testing.assert_array_equal(again.train_labels, data.train_labels)
    assert len(server.requests) == requests


def test_load_dataset_network_failure_is_one_readable_error(server, tiny_mnist):
    server.routes.clear()  # every file now 404s
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", progress=False)
    error = info.value
    assert isinstance(error, FileNotFoundError)
    assert error.__cause__ is None and error.__suppress_context__  # no traceback chain
    message = str(error)
    assert "HTTP 404" in message and "mnist5k" in message and "CONVNP_DATA" in message
    assert "train-images-idx3-ubyte.gz" in message


def test_load_dataset_checksum_mismatch_is_value_error(server, tiny_mnist, tmp_path):
    server.routes["/mnist/t10k-labels-idx1-ubyte.gz"] = Route(b"\x1f\x8b corrupted")
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_dataset("mnist", progress=False)
    assert "t10k-labels-idx1-ubyte.gz" not in _leftovers(tmp_path / "cache" / "mnist")
