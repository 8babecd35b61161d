"""What `convnp train` leads to: the next commands it prints, `--report`, `convnp report`,
evaluate's headed confusion matrix and the export message (subprocesses, bundled data)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "convnp", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("run")
    result = run("train", "--epochs", "1", "--arch", "4c5-relu-2m-16f-relu", "--out", str(out),
                 "--quiet", "--report")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_train_prints_the_next_commands(trained):
    out, stdout = trained
    model = out / "model.safetensors"
    after = stdout.split("next:\n", 1)[1]
    for command in (f"convnp evaluate {model}", f"convnp predict {model} IMAGE.png",
                    f"convnp plot {out} {out / 'figures'}", f"convnp report {out}"):  # fmt: skip
        assert command in after, command


def test_train_report_writes_the_page(trained):
    out, stdout = trained
    page = out / "report.html"
    assert f"report written to {page}" in stdout
    text = page.read_text(encoding="utf-8")
    assert "Training history" in text and "Confusion matrix" in text and "data:image/png" in text


def test_report_command_defaults_to_the_run_folder(trained, tmp_path):
    out, _ = trained
    result = run("report", str(out / "model.safetensors"), str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.html").stat().st_size > 10_000
    assert "--data-dir" in run("report", "--help").stdout


def test_evaluate_heads_the_confusion_matrix(trained):
    out, _ = trained
    result = run("evaluate", str(out / "model.safetensors"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("confusion matrix (rows: true class, columns: predicted class):")
    header, *rows = lines[start + 1 : start + 12]
    assert header.split()[:3] == ["true", "\\", "predicted"]
    assert header.split()[3:] == [str(i) for i in range(10)]
    assert [row.split()[:2] for row in rows] == [[str(i), str(i)] for i in range(10)]
    counts = np.array([[int(v) for v in row.split()[2:]] for row in rows])
    assert counts.shape == (10, 10) and counts.sum() == 1000


def test_export_says_what_the_graph_takes_and_gives(trained, tmp_path):
    pytest.importorskip("onnx")
    out, _ = trained
    result = run("export", str(out / "model.safetensors"), str(tmp_path / "m.onnx"),
                 "--probabilities")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # --arch trains with the `modern` recipe's settings: standardised inputs
    assert re.search(r"raw pixels 0-255, standardised in the graph per channel: "
                     r"\(x - 33\.\d\d\)/78\.\d\d", result.stdout), result.stdout  # fmt: skip
    assert "output 'output': probabilities" in result.stdout
