"""Print the line count of src/convnp per package (CI runs it so growth is visible).

    python scripts/line_counts.py

One row per package (a directory with Python files; the top-level modules count as
"convnp (core modules)"), its files and lines, then the total. Lines are physical lines
of the .py files, blank lines and comments included, as ``wc -l`` counts them.
"""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src" / "convnp"


def line_counts(root: Path = SOURCE) -> dict[str, tuple[int, int]]:
    """{package: (files, lines)} for every directory below ``root`` holding .py files."""
    counts: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*.py")):
        parent = path.parent.relative_to(root.parent).as_posix().replace("/", ".")
        name = f"{parent} (core modules)" if path.parent == root else parent
        files, lines = counts.get(name, (0, 0))
        with path.open("rb") as file:
            counts[name] = (files + 1, lines + sum(1 for _ in file))
    return counts


def main() -> int:
    counts = line_counts()
    if not counts:
        print(f"line_counts: no Python files under {SOURCE}", file=sys.stderr)
        return 1
    width = max(len(name) for name in counts)
    print(f"{'package':<{width}}  {'files':>5}  {'lines':>6}")
    for name, (files, lines) in counts.items():
        print(f"{name:<{width}}  {files:>5}  {lines:>6}")
    total_files = sum(files for files, _ in counts.values())
    total_lines = sum(lines for _, lines in counts.values())
    print(f"{'total':<{width}}  {total_files:>5}  {total_lines:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
