"""MkDocs hooks: the pages and files that are generated rather than written.

* KaTeX is fetched once from the npm registry (``npm pack katex@KATEX_VERSION``) into the
  git-ignored ``docs/vendor/katex``, so equations render from the site's own files: no CDN.
* ``cli.md``: the command-line reference, from ``convnp.app.cli.build_parser()`` (always
  the options the installed parser has).
* ``benchmarks.md``: tables from ``benchmarks/results.json`` (the last benchmark run).
* ``figures/...``: the example figures kept under ``examples/figures``.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

KATEX_VERSION = "0.16.22"
ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "docs" / "vendor" / "katex"
FIGURES = ROOT / "examples" / "figures"


# -- KaTeX, vendored at build time -----------------------------------------------------------
def _vendor_katex() -> None:
    stamp = VENDOR / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == KATEX_VERSION:
        return
    if shutil.which("npm") is None:
        raise SystemExit("the docs build needs npm to fetch KaTeX (apt-get install npm)")
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            ["npm", "pack", f"katex@{KATEX_VERSION}", "--silent", "--pack-destination", folder],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        with tarfile.open(Path(folder) / f"katex-{KATEX_VERSION}.tgz") as archive:
            archive.extractall(folder, filter="data")
        dist = Path(folder) / "package" / "dist"
        if VENDOR.exists():
            shutil.rmtree(VENDOR)
        VENDOR.mkdir(parents=True)
        for name in ("katex.min.js", "katex.min.css"):
            shutil.copy(dist / name, VENDOR / name)
        shutil.copytree(dist / "fonts", VENDOR / "fonts")
        (VENDOR / "contrib").mkdir()
        shutil.copy(dist / "contrib" / "auto-render.min.js", VENDOR / "contrib")
        shutil.copy(Path(folder) / "package" / "LICENSE", VENDOR / "LICENSE")
    stamp.write_text(KATEX_VERSION + "\n")


def on_config(config: Any) -> Any:
    _vendor_katex()
    return config


# -- the command-line reference --------------------------------------------------------------
def cli_reference() -> str:
    from convnp.app.cli import build_parser

    parser = build_parser()
    wide = functools.partial(argparse.HelpFormatter, width=92)
    parser.formatter_class = wide
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lines = [
        "# Command line",
        "",
        "Generated from `convnp.app.cli.build_parser()` when the site is built, so it lists",
        "exactly the options of this version. User mistakes end in one `convnp: error: ...`",
        "line with exit code 2.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, sub in subcommands.choices.items():
        sub.formatter_class = wide
        if name == "bench":  # its options belong to benchmarks/run.py
            text = "usage: convnp bench [options of benchmarks/run.py]"
        else:
            text = sub.format_help().rstrip()
        lines += ["", f"## convnp {name}", "", "```text", text, "```"]
    return "\n".join(lines) + "\n"


# -- the benchmark tables ----------------------------------------------------------------------
def _ratio(value: float) -> str:
    return f"{value:.2f}"


def benchmarks_page() -> str:
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    lines = [
        "# Benchmarks",
        "",
        "From `benchmarks/results.json`, the committed record written by",
        "`python benchmarks/run.py --json benchmarks/results.json`: convnp and PyTorch on the",
        "same weights and batches, interleaved.",
        "Ratios are convnp / PyTorch (above 1: convnp is faster or, for memory, uses more).",
        "",
        f"Machine: {results.get('machine', '?')}",
        "",
        "| model | batch | train img/s convnp | torch | ratio | inference img/s convnp "
        "| torch | ratio | peak MB convnp | torch |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in results.get("models", []):
        ours, theirs = row["convnp"], row["torch"]
        lines.append(
            f"| {row['model']} | {row['batch_size']} "
            f"| {ours['train_images_per_s']:,.0f} | {theirs['train_images_per_s']:,.0f} "
            f"| {_ratio(row['ratio_train_images_per_s'])} "
            f"| {ours['infer_images_per_s']:,.0f} | {theirs['infer_images_per_s']:,.0f} "
            f"| {_ratio(row['ratio_infer_images_per_s'])} "
            f"| {ours['peak_rss_mb']:,.0f} | {theirs['peak_rss_mb']:,.0f} |"
        )
    for axis, rows in results.get("scaling", {}).items():
        if not rows:
            continue
        columns = list(rows[0])
        lines += ["", f"## Scaling with {axis.replace('_', ' ')}", ""]
        lines.append("| " + " | ".join(c.replace("_", " ") for c in columns) + " |")
        lines.append("|" + "--:|" * len(columns))
        for row in rows:
            cells = [f"{v:,.1f}" if isinstance(v, float) else str(v) for v in row.values()]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    files.append(File.generated(config, "benchmarks.md", content=benchmarks_page()))
    for path in sorted(FIGURES.rglob("*.png")):
        uri = "figures/" + path.relative_to(FIGURES).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


# -- the derivation pages: equation, then the code ------------------------------------------
# Their docstrings are written as plain text (equations on indented lines), which Markdown
# would reflow into one paragraph; on these pages the KaTeX equations stand above each block
# and the source (docstring included, with its line breaks) is shown open.
_CODE_ONLY = ("show_bases", "show_docstring_description", "show_docstring_parameters",
              "show_docstring_returns", "show_docstring_raises")  # fmt: skip


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if not page.file.src_uri.startswith("derivations/"):
        return markdown
    out: list[str] = []
    after_block = False
    for line in markdown.split("\n"):
        if after_block and line.strip() == "options:":
            after_block = False
            continue  # the block's own options follow ours under the same key
        after_block = line.startswith(":::")
        out.append(line)
        if after_block:
            out += ["    options:", *(f"      {name}: false" for name in _CODE_ONLY)]
    return "\n".join(out)
