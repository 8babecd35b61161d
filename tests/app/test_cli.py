"""The command line end to end, in subprocesses, on the bundled data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from convnp.data import load_dataset


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "convnp", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run("train", "--epochs", "2", "--arch", "4c5-relu-2m-32f-relu", "--out", str(out),
                 "--quiet", "--seed", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_prints_accuracy_and_saves(trained):
    out, result = trained
    assert "test accuracy" in result.stdout
    accuracy = float(result.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.8
    assert f"model saved to {out / 'model.safetensors'}" in result.stdout
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "checkpoint.safetensors",
                                               "history.json", "history.csv"}  # fmt: skip


def test_evaluate_prints_accuracy_and_confusion(trained):
    out, _ = trained
    result = run("evaluate", str(out / "model.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "mnist5k test set: accuracy" in result.stdout
    assert "confusion matrix" in result.stdout


def test_predict_on_npy_images(trained, tmp_path):
    out, _ = trained
    data = load_dataset("mnist5k")
    paths = []
    for index in (0, 500):
        path = tmp_path / f"digit{index}.npy"
        np.save(path, data.test_images[index, 0])
        paths.append(str(path))
    result = run("predict", str(out / "model.safetensors"), *paths)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and "probabilities" in lines[0]


def test_resume_continues_to_more_epochs(trained, tmp_path):
    out, _ = trained
    result = run("train", "--resume", str(out), "--epochs", "3", "--out", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "after 3 epochs" in result.stdout


def test_summary_and_gradcheck():
    result = run("summary", "--model", "bouvrie")
    assert result.returncode == 0, result.stderr
    assert "(6, 24, 24)" in result.stdout and "total parameters: 3,898" in result.stdout
    result = run("gradcheck", "--model", "bouvrie", "--samples", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--epochs", "0"], "must be >= 1"),
        (["train", "--arch", "6c5-2x"], "unknown token"),
        (["evaluate", "missing.safetensors"], "no such file"),
        (["train", "--data", "imagenet"], "invalid choice"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(args, message, tmp_path):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_everywhere():
    for command in (
        [],
        ["train"],
        ["evaluate"],
        ["predict"],
        ["summary"],
        ["gradcheck"],
        ["export"],
        ["plot"],
    ):
        result = run(*command, "--help")
        assert result.returncode == 0 and "usage: convnp" in result.stdout


def test_export_writes_an_onnx_file_that_runs(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out, _ = trained
    target = tmp_path / "model.onnx"
    result = run("export", str(out / "model.safetensors"), str(target))
    assert result.returncode == 0, result.stderr
    assert "ONNX opset" in result.stdout
    session = ort.InferenceSession(str(target))
    x = np.zeros((3, 1, 28, 28), np.float32)
    assert session.run(None, {"input": x})[0].shape == (3, 10)


def test_plot_writes_figures(trained, tmp_path):
    pytest.importorskip("matplotlib")
    out, _ = trained
    result = run("plot", str(out), str(tmp_path))
    assert result.returncode == 0, result.stderr
    names = {p.name for p in tmp_path.iterdir()}
    assert {"learning_curves.png", "kernels.png", "confusion.png"} <= names
    assert all((tmp_path / name).stat().st_size > 1000 for name in names)


def test_bench_passes_its_options_to_the_benchmark_script():
    result = run("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: run.py" in result.stdout and "--no-scaling" in result.stdout


def test_other_commands_still_reject_unknown_options():
    result = run("summary", "bouvrie", "--bogus")
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stderr


def test_summary_prints_the_training_memory_for_an_input_shape_and_batch():
    result = run("summary", "--model", "modern", "--input-shape", "3,32,32", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert "Conv2d(3, 32" in result.stdout  # built for 3-channel input
    assert "training memory, batch 8 (MiB):" in result.stdout
    assert "estimated total" in result.stdout
    bad = run("summary", "--model", "modern", "--input-shape", "3,x")
    assert bad.returncode != 0 and "expected positive integers like 3,32,32" in bad.stderr
