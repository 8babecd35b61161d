"""Exports that carry their preprocessing: raw 0-255 pixels into the ONNX graph (and the
torch module) give what `convnp predict` reports, for every built-in model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from convnp import io, train  # noqa: E402
from convnp.app import cli, zoo  # noqa: E402
from convnp.data import channel_stats, load_dataset  # noqa: E402

IMAGES = 24


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist5k")


def _saved_model(name: str, data, folder: Path) -> tuple[Path, dict]:
    """A built-in model with non-trivial state, saved with the info `convnp train` records."""
    recipe = zoo.get_recipe(name)
    rng = np.random.default_rng(4)
    model = recipe.build(rng=rng)
    for layer in model:  # move constant-initialised state (β, γ, running stats) off its start
        for value in (*layer.params.values(), *layer.buffers.values()):
            if value.ndim == 1:
                value[...] = rng.uniform(0.5, 1.5, value.shape)
    normalize: dict = {"kind": recipe.normalize, "mean": None, "std": None}
    if recipe.normalize == "standardize":
        mean, std = channel_stats(data.train_images)
        normalize.update(mean=mean.tolist(), std=std.tolist())
    info = {"dataset": "mnist5k", "input_shape": [1, 28, 28], "loss": recipe.loss,
            "class_names": list(data.class_names), "normalize": normalize}  # fmt: skip
    path = folder / f"{name}.safetensors"
    io.save(model, path, info)
    return path, info


def _predict_like_the_cli(path: Path, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes and scores by the code `convnp predict` runs (its loader and output mapping)."""
    model, info = cli._load_model(str(path))
    ((x, _),) = cli._loader_like_training(raw, np.zeros(len(raw), np.int64), info, model)
    y = model.predict(x)
    scores, _ = train.output_scores(info.loss, y)
    return train.predicted_classes(zoo.make_loss(info.loss), y), scores


@pytest.mark.parametrize("name", sorted(zoo.RECIPES))
def test_onnx_on_raw_pixels_gives_predicts_classes_and_probabilities(name, data, tmp_path):
    path, info = _saved_model(name, data, tmp_path)
    raw = data.test_images[::41][:IMAGES]  # uint8, every class
    classes, scores = _predict_like_the_cli(path, raw)
    target = tmp_path / "model.onnx"
    assert cli.main(["export", str(path), str(target), "--probabilities"]) == 0
    proto = onnx.load(target)
    assert "raw pixels 0-255" in proto.doc_string
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": raw.astype(np.float32)})[0]
    if info["loss"] != "squared_error":  # squared error: predict reports the sigmoid outputs
        np.testing.assert_allclose(theirs.sum(axis=1), 1.0, rtol=1e-5)
    # the most probable class is predict's class (for RBF energies: the smallest energy)
    np.testing.assert_array_equal(theirs.argmax(axis=1), classes)
    np.testing.assert_allclose(theirs, scores, rtol=1e-4, atol=2e-6)


def test_export_message_says_what_input_the_graph_takes(data, tmp_path):
    path, _ = _saved_model("lenet5", data, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "convnp", "export", str(path), str(tmp_path / "m.onnx")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "raw pixels 0-255, standardised in the graph per channel: (x - " in result.stdout
    assert "output 'output': network output" in result.stdout


def test_torch_module_takes_the_same_raw_input(data, tmp_path):
    torch = pytest.importorskip("torch")
    from convnp.interop.torch import to_torch

    for name in ("lenet5", "bouvrie"):
        path, info = _saved_model(name, data, tmp_path)
        raw = data.test_images[:16]
        model, recorded = cli._load_model(str(path))
        ((x, _),) = cli._loader_like_training(raw, np.zeros(16, np.int64), recorded, model)
        module = to_torch(model.eval(), normalize=info["normalize"])
        with torch.no_grad():
            theirs = module(torch.from_numpy(raw.astype(np.float32))).numpy()
        np.testing.assert_allclose(theirs, model.predict(x), rtol=1e-4, atol=1e-5)
        assert module.net[0].weight.shape == model[0].params["weight"].shape
