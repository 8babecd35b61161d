"""The documentation site: it builds in strict mode, its derivation pages render their
equations offline (headless Chromium), and every "SPEC §N" the code cites exists in the
repository's copy of the specification."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import dump_dom

ROOT = Path(__file__).resolve().parent.parent
DERIVATIONS = ("fully-connected", "convolution", "subsampling", "combinations", "errata")


def test_every_cited_spec_section_is_in_the_repository() -> None:
    spec = (ROOT / "docs" / "spec.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", spec, re.MULTILINE))
    cited = set()
    for folder in ("src", "examples", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            cited |= set(re.findall(r"SPEC §(\d+)", path.read_text(encoding="utf-8")))
    assert cited and cited <= sections, f"cited {sorted(cited)}, in docs/spec.md {sorted(sections)}"


def test_every_cited_design_section_is_in_the_repository() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    cited = set()
    for folder in ("src", "examples", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            cited |= set(re.findall(r"DESIGN (\d+\.\d+)", path.read_text(encoding="utf-8")))
    assert cited, "no DESIGN citations found: the pattern is wrong"
    for section in cited:
        assert f"### {section} " in design, f"DESIGN {section} is cited but not in docs/design.md"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    if shutil.which("npm") is None and not (ROOT / "docs" / "vendor" / "katex").is_dir():
        pytest.skip("the docs build fetches KaTeX with npm, which is not installed")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_site_has_every_page_and_references_nothing_remote(site: Path) -> None:
    pages = ["index", "getting-started", "models", "examples", "api", "cli", "formats",
             "cluster", "benchmarks", "spec"]  # fmt: skip
    pages += [f"derivations/{name}" for name in DERIVATIONS]
    for page in pages:
        text = (site / f"{page}.html").read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|img|link|iframe)[^>]+(?:src|href)="(?:https?:)?//', text)
        assert not remote, f"{page}: {remote}"
    cli = (site / "cli.html").read_text(encoding="utf-8")
    assert "convnp report" in cli and "--probabilities" in cli
    assert (site / "vendor" / "katex" / "katex.min.js").is_file()
    assert (site / "figures" / "sparse_combinations.png").is_file()
    source = (site / "derivations" / "subsampling.html").read_text(encoding="utf-8")
    assert "src/convnp/layers/subsample.py" in source  # the code beside the equations


@pytest.mark.parametrize("page", DERIVATIONS)
def test_derivation_page_renders_its_equations(site: Path, page: str, tmp_path: Path) -> None:
    dom = dump_dom(site / "derivations" / f"{page}.html", tmp_path)
    rendered = dom.count('class="katex"')
    # the visible text: KaTeX keeps the source in <annotation> (for copying), not shown
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<annotation.*?</annotation>", "", dom, flags=re.S))
    unrendered = re.findall(r"\$\$|\\\[|\\\(", text)
    assert rendered >= 3, f"{page}: {rendered} equations rendered"
    assert not unrendered, f"{page}: raw TeX left in the page: {unrendered[:5]}"
