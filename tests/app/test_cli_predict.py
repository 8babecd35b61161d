"""`convnp predict` over good and bad files: every readable file is predicted, each bad one
reported in one line naming it, and the exit status says something failed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from convnp import Sequential, io
from convnp.layers import Flatten, Linear


def _model_file(tmp_path):
    model = Sequential(Flatten(), Linear(30, 3, rng=np.random.default_rng(0)))
    path = tmp_path / "model.safetensors"
    io.save(model, path, {"input_shape": [1, 6, 5], "class_names": ["a", "b", "c"]})
    return path


def _predict(*args):
    command = [sys.executable, "-m", "convnp", "predict", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    model = _model_file(tmp_path)
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((6, 5), np.uint8))
    batch = tmp_path / "batch.npy"
    np.save(batch, np.zeros((3, 1, 6, 5), np.float32))
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 6, 5)))
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((6, 5), np.nan))
    text = tmp_path / "text.npy"
    np.save(text, np.array(["abc"]))
    result = _predict(model, empty, good, nan, batch, tmp_path / "missing.npy", text)
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        str(good),
        *(f"{batch}[{i}]" for i in range(3)),
    ]
    assert all("probabilities: " in line for line in lines)
    errors = result.stderr.splitlines()
    assert len(errors) == 5 and "Traceback" not in result.stderr
    assert errors[0] == f"convnp predict: error: {empty}: empty array of shape (0, 6, 5)"
    assert errors[1].endswith("nan.npy: image 0 contains NaN or inf")
    assert errors[2].endswith("missing.npy: no such file")
    assert "text.npy: array of dtype <U3" in errors[3]
    assert errors[4].startswith("convnp predict: error: 4 of 6 files could not be read")


def test_all_good_files_exit_zero(tmp_path):
    model = _model_file(tmp_path)
    good = tmp_path / "good.npy"
    np.save(good, np.ones((1, 6, 5), np.float32))
    result = _predict(model, good)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good}: ") and result.stderr == ""


def test_a_name_with_control_characters_is_reported_on_one_line_escaped(tmp_path):
    """\\x1e and \\x0b are line breaks to str.splitlines; a name holding them is shown as
    escapes, so each error is still one line that names the file (a fuzzing find)."""
    model = _model_file(tmp_path)
    result = _predict(model, "run\x1e", "tab\x0b.npy")
    assert result.returncode == 2
    errors = result.stderr.splitlines()
    assert errors == [
        "convnp predict: error: run\\x1e: no such file",
        "convnp predict: error: tab\\x0b.npy: no such file",
        "convnp predict: error: 2 of 2 files could not be read: run\\x1e, tab\\x0b.npy",
    ]
