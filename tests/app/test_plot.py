"""convnp.app.plot: every figure is a readable PNG; plot_run writes what applies to a run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from convnp import io
from convnp.app import plot  # noqa: E402
from convnp.data import Dataset  # noqa: E402
from convnp.layers import (  # noqa: E402
    AvgPool2d,
    Conv2d,
    FeatureMapCombination,
    Flatten,
    Linear,
    ReLU,
)
from convnp.model import Sequential  # noqa: E402
from convnp.runs import RunInfo  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    """(width, height) in pixels from the PNG header."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _model(rng):
    return Sequential(
        Conv2d(1, 4, 3, padding=1, rng=rng),
        ReLU(),
        AvgPool2d(2),
        FeatureMapCombination(4, 5, 3, penalty="entropy", penalty_weight=0.01, rng=rng),
        ReLU(),
        AvgPool2d(2),
        Flatten(),
        Linear(5 * 2 * 2, 3, rng=rng),
    )


def _dataset(rng, n=30):
    images = rng.integers(0, 256, size=(n, 1, 12, 12), dtype=np.uint8)
    labels = np.arange(n) % 3
    return Dataset(images, labels, images.copy(), labels.copy(), ("cat", "dog", "bird"), "toy")


def _history():
    return [
        {"epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 0.5 / e,
         "val_loss": 1.2 / e, "val_accuracy": 0.9 - 0.5 / e}
        for e in (1, 2, 3)
    ]  # fmt: skip


def test_history(tmp_path):
    path = plot.plot_history(_history(), tmp_path / "curves.png", title="toy")
    width, height = _png_size(path)
    assert width > 300 and height > 200
    train_only = [{k: v for k, v in r.items() if not k.startswith("val")} for r in _history()]
    assert _png_size(plot.plot_history(train_only, tmp_path / "train.png"))
    with pytest.raises(ValueError, match="empty"):
        plot.plot_history([], tmp_path / "none.png")


def test_kernels_grid_for_one_and_many_input_maps(rng, tmp_path):
    model = _model(rng)
    wide = _png_size(plot.plot_kernels(model[0], tmp_path / "first.png"))
    many = _png_size(plot.plot_kernels(model[3].params["weight"], tmp_path / "second.png"))
    assert many[1] > wide[1]  # 5 rows of 4 kernels are taller than 4 kernels wrapped 2x2
    with pytest.raises(ValueError, match=r"expected weights \(O, C, kH, kW\)"):
        plot.plot_kernels(np.zeros((3, 3)), tmp_path / "bad.png")


def test_feature_maps_restore_the_mode(rng, tmp_path):
    model = _model(rng)
    image = rng.random((1, 12, 12)).astype(np.float32)
    path = plot.plot_feature_maps(model, image, tmp_path / "maps.png", title="toy")
    assert _png_size(path)[1] > 200  # input + conv, pool, combination, pool rows
    assert model.training and all(layer.training for layer in model)
    with pytest.raises(ValueError, match=r"one image \(C, H, W\)"):
        plot.plot_feature_maps(model, image[None], tmp_path / "bad.png")


def test_alpha_single_and_panels(rng, tmp_path):
    layer = FeatureMapCombination(6, 16, 5, rng=rng)
    one = _png_size(plot.plot_alpha(layer, tmp_path / "alpha.png"))
    panels = {"none": layer.alpha, "entropy": np.eye(16, 6), "power": np.eye(16, 6)}
    three = _png_size(plot.plot_alpha(panels, tmp_path / "panels.png", title="t"))
    assert three[0] > 1.5 * one[0]


def test_confusion(tmp_path):
    confusion = np.array([[5, 1, 0], [0, 4, 2], [1, 0, 7]])
    assert _png_size(plot.plot_confusion(confusion, ["a", "b", "c"], tmp_path / "c.png"))
    with pytest.raises(ValueError, match="3 class names but a confusion matrix of"):
        plot.plot_confusion(np.eye(4, dtype=int), ["a", "b", "c"], tmp_path / "c.png")


def test_plot_run_writes_every_applicable_figure(rng, tmp_path):
    run = tmp_path / "run"
    model = _model(rng)
    # "standardize" without stored statistics: they are taken from the training images
    info = {"dataset": "toy", "model": "tiny", "normalize": {"kind": "standardize"}}
    io.save(model, run / "model.safetensors", info=info)
    (run / "history.json").write_text(json.dumps(_history()))
    written = plot.plot_run(run, tmp_path / "figures", image_index=4, data=_dataset(rng))
    names = [path.name for path in written]
    assert names == [
        "learning_curves.png", "kernels.png", "alpha_3.png", "feature_maps.png", "confusion.png",
    ]  # fmt: skip
    assert all(_png_size(path) for path in written)
    # a bare model file with no data set named: only what needs no data
    io.save(model, tmp_path / "bare.safetensors")
    bare = plot.plot_run(tmp_path / "bare.safetensors", tmp_path / "bare")
    assert [path.name for path in bare] == ["kernels.png", "alpha_3.png"]
    with pytest.raises(ValueError, match="image_index 99 outside the 30 test images"):
        plot.plot_run(run, tmp_path / "figures", image_index=99, data=_dataset(rng))


def test_core_never_imports_matplotlib():
    code = "import sys, convnp, convnp.train, convnp.app.cli; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_missing_matplotlib_gives_install_advice(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install 'convnp\[plot\]'"):
        plot.plot_history(_history(), tmp_path / "x.png")


def _legends(monkeypatch, plot_call):
    """The legend labels of each axes of the figure ``plot_call`` draws."""
    figures = []
    monkeypatch.setattr(plot, "_save", lambda figure, path: figures.append(figure) or path)
    plot_call()
    return [axes.get_legend_handles_labels()[1] for axes in figures[0].axes]


def test_curves_say_validation_and_show_the_test_set_once(rng, tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "history.json").parent.mkdir()
    (run / "history.json").write_text(json.dumps(_history()))
    info = RunInfo(model="tiny", val_size=10, test_accuracy=0.7, test_loss=0.9).to_dict()
    io.save(_model(rng), run / "model.safetensors", info=info)
    labels = _legends(monkeypatch, lambda: plot.plot_run(run, tmp_path / "figures"))
    assert labels == [["train", "validation", "test (once)"]] * 2
    # a run from before the validation split: its "val" curve was the test set
    io.save(_model(rng), run / "model.safetensors", info={"model": "tiny"})
    labels = _legends(monkeypatch, lambda: plot.plot_run(run, tmp_path / "figures"))
    assert labels == [["train", "test (per epoch, older run)"]] * 2
