"""The HTML run report: every section present, self-contained, and rendered by a browser."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from browser import screenshot  # noqa: E402

from convnp import io, train  # noqa: E402
from convnp.app import report  # noqa: E402
from convnp.app.cli import main  # noqa: E402
from convnp.layers import (  # noqa: E402
    Conv2d,
    FeatureMapCombination,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
)
from convnp.model import Sequential  # noqa: E402

SECTIONS = (
    "Command and hyper-parameters",
    "Model",
    "Data",
    "Training history",
    "Learning curves",
    "Confusion matrix",
    "Feature maps of test image 3",
    "Most confidently misclassified",
    "First-layer kernels",
    "Learned combinations, layer 3",
    "Timing",
    "Versions",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder as `convnp train` writes it, with a FeatureMapCombination layer (its
    weights untrained: the page shows whatever the run holds)."""
    rng = np.random.default_rng(0)
    model = Sequential(
        Conv2d(1, 4, 5, rng=rng), ReLU(), MaxPool2d(2),
        FeatureMapCombination(4, 6, 5, rng=rng), ReLU(), MaxPool2d(2),
        Flatten(), Linear(6 * 4 * 4, 10, rng=rng),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("run")
    info = {"dataset": "mnist5k", "model": "custom", "input_shape": [1, 28, 28],
            "class_names": [str(i) for i in range(10)], "loss": "cross_entropy",
            "normalize": {"kind": "unit", "mean": None, "std": None}, "batch_size": 32,
            "epochs": 2, "seed": 0}  # fmt: skip
    io.save(model, out / io.MODEL_NAME, info)
    history = [
        {"epoch": e, "train_loss": 2.3 / e, "train_accuracy": 0.1 * e, "lr": 0.01,
         "seconds": 1.5, "images_per_second": 2600.0, "val_loss": 2.2 / e, "val_accuracy": 0.1}
        for e in (1, 2)
    ]  # fmt: skip
    train.write_history(out, history)
    return out


def test_page_has_every_section_and_is_self_contained(run: Path) -> None:
    page = report.build_report(run, image_index=3)
    for title in SECTIONS:
        assert title in page, title
    assert "<td class=text>custom</td>" in page and "2,600 images/s" in page
    # nothing remote: every src/href is a data: URI, and no URL appears anywhere
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert len(references) >= 6 and all(
        ref.startswith("data:image/png;base64,") for ref in references
    )
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.IGNORECASE)


def test_typed_run_record_is_read_like_a_dict() -> None:
    @dataclasses.dataclass
    class RunInfo:
        dataset: str = "mnist5k"
        loss: str = "rbf"

    typed, plain = RunInfo(), {"dataset": "mnist5k", "loss": "rbf"}
    for record in (typed, plain):
        assert report._field(record, "loss") == "rbf"
        assert report._field(record, "missing", 7) == 7
        assert report._as_mapping(record) == plain


def test_command_writes_a_page_that_chromium_renders(run: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    assert main(["report", str(run), str(page)]) == 0
    pixels = screenshot(page, tmp_path / "report.png", tmp_path)
    assert pixels.shape[:2] == (3000, 1200)
    # not blank: text and figures give a spread of grey levels over the whole page
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    top, bottom = pixels[:1500], pixels[1500:]
    assert top.std() > 10 and bottom.std() > 10


def test_report_of_a_missing_run_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_recorded_command_line_is_shown_as_typed() -> None:
    section = report._command_section({"command": ["convnp", "train", "--arch", "6c5-2s x"]})
    assert "convnp train --arch &#x27;6c5-2s x&#x27;" in section and "as recorded" in section
