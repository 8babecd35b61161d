"""Headless Chromium for tests that look at a page as a person would (Debian's ``chromium``).

Tests that use it skip cleanly when it is not installed (``.ci/run`` installs it). Every run
gets a fresh profile folder and no network features (sync, updates, QUIC, background
requests), so a page that needed anything remote would show it, not fetch it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    """The browser's path, or skip the calling test."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def _run(arguments: list[str], profile: Path) -> subprocess.CompletedProcess:
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def screenshot(page: Path, out: Path, tmp_path: Path, size: str = "1200,3000") -> np.ndarray:
    """Render ``page`` and return the screenshot's pixels (H, W, channels), uint8."""
    from PIL import Image

    result = _run([f"--screenshot={out}", f"--window-size={size}", page.as_uri()], tmp_path / "p1")
    assert out.is_file(), result.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB"))


def dump_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``)."""
    result = _run(["--virtual-time-budget=10000", "--dump-dom", page.as_uri()], tmp_path / "p2")
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout
