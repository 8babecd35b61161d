"""scripts/line_counts.py (run by .ci/run): one row per package of src/convnp, and a total
that is every .py file's line count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_line_counts_cover_every_package_and_add_up():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "line_counts.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {line.rsplit(None, 2)[0]: line.split()[-2:] for line in result.stdout.splitlines()}
    for package in ("convnp (core modules)", "convnp.layers", "convnp.runtime", "convnp.interop"):
        assert package in rows, result.stdout
    files = list((ROOT / "src" / "convnp").rglob("*.py"))
    lines = sum(len(path.read_bytes().splitlines()) for path in files)
    assert rows["total"] == [str(len(files)), str(lines)]
