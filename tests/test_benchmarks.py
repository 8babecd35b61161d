"""benchmarks/run.py runs end to end (tiny settings) and writes the figures it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.mark.parametrize("torch_flag", [[], ["--no-torch"]], ids=["with-torch", "convnp-only"])
def test_benchmark_script_reports_every_figure(tmp_path, torch_flag):
    if not torch_flag:
        pytest.importorskip("torch")
    output = tmp_path / "results.json"
    arguments = ["--models", "bouvrie", "--windows", "1", "--steps", "2", "--no-scaling"]
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, *torch_flag, "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(output.read_text())
    assert 0 < report["import_seconds"] < 10
    (model,) = report["models"]
    assert model["model"] == "bouvrie" and model["batch_size"] == 50
    figures = model["convnp"]
    assert figures["train_images_per_s"] > 0 and figures["infer_images_per_s"] > 0
    assert figures["peak_rss_mb"] > 0
    assert [row["layer"].split("(")[0] for row in figures["layers"]][:2] == ["Conv2d", "Sigmoid"]
    if torch_flag:
        assert "torch" not in model
    else:
        assert model["torch"]["train_images_per_s"] > 0
        assert model["ratio_train_images_per_s"] == pytest.approx(
            figures["train_images_per_s"] / model["torch"]["train_images_per_s"]
        )
    assert "ratio" in completed.stdout or torch_flag
