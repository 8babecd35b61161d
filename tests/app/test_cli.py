"""The command line end to end, in subprocesses, on the bundled data."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

import convnp
from convnp import io, runs, train
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
    assert accuracy > 0.75  # 2 epochs of a tiny net on 3,600 images (10% held out)
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


# -- run folders, validation, divergence and errors (issue 12), in process for speed -----
TINY = ("--arch", "2c5-2m-10f", "--batch-size", "500", "--val-split", "100", "--quiet")


def invoke(capsys, *args):
    """(exit code, stdout, stderr) of ``convnp *args`` run in this process."""
    from convnp.app.cli import main

    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, text, command="train"):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"convnp {command}: error: "), err
    assert text in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 1-epoch run, made by a subprocess (other tests may not change it)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    result = run("train", *TINY, "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_each_new_run_gets_its_own_folder_and_latest_points_to_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folders = []
    for _ in range(2):
        code, out, err = invoke(capsys, "train", *TINY, "--epochs", "1", "--model", "bouvrie")
        assert code == 2 and "not allowed with argument --arch" in err  # one architecture only
        code, out, err = invoke(capsys, "train", *TINY, "--epochs", "1")
        assert code == 0, err
        folders.append(out.split("run folder ")[1].split()[0])
    assert folders[0] != folders[1] and all(f.startswith("runs/custom-") for f in folders)
    for folder in folders:
        assert (tmp_path / folder / "model.safetensors").is_file()
    assert os.readlink(tmp_path / "runs" / "latest") == folders[1].removeprefix("runs/")
    assert "data: mnist5k from the copy bundled with convnp" in out
    assert "3900 training images, 100 validation images held out" in out


def test_resume_writes_into_its_own_folder(capsys, tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    (run_dir / "model.safetensors").unlink()  # as if killed after the last checkpoint
    (run_dir / ".checkpoint.safetensors.0badf00d.tmp").write_bytes(b"half a checkpo")
    code, out, err = invoke(capsys, "train", "--resume", run_dir)
    assert code == 0, err
    assert "removed .checkpoint.safetensors.0badf00d.tmp" in out
    assert (run_dir / "model.safetensors").is_file() and not (tmp_path / "runs").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.safetensors", "history.csv", "history.json", "model.safetensors"
    ]  # fmt: skip


def test_extending_a_finished_run_states_the_new_schedule(capsys, tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    code, _, err = invoke(capsys, "train", "--resume", run_dir)
    assert_one_line_error(code, err, "already trained 1 epochs; pass --epochs N with N > 1")
    code, out, err = invoke(capsys, "train", "--resume", run_dir, "--epochs", "2", "--quiet")
    assert code == 0, err
    assert "planned for 1 epochs and now runs 2: its cosine schedule is re-planned" in out
    assert "CosineLR(base_lr=0.001, total_steps=16" in out
    history = json.loads((run_dir / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    code, _, err = invoke(capsys, "train", "--resume", run_dir, "--epochs", "3", "--lr", "0.1")
    assert_one_line_error(code, err, "--lr cannot be combined with --resume")


def test_out_is_checked_before_any_training(capsys, tiny_run, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = invoke(capsys, "train", *TINY, "--out", tmp_path / "file")
    assert_one_line_error(code, err, "file is an existing file")
    code, _, err = invoke(capsys, "train", *TINY, "--out", tiny_run)
    assert_one_line_error(code, err, "holds another run")
    code, _, err = invoke(capsys, "export", tiny_run, tmp_path)
    assert_one_line_error(code, err, "is a folder; give a file name", "export")
    code, _, err = invoke(capsys, "plot", tiny_run, tmp_path / "file")
    assert_one_line_error(code, err, "is an existing file; give a folder", "plot")


def test_every_command_reads_a_model_file_a_checkpoint_or_a_run_folder(capsys, tiny_run, tmp_path):
    image = tmp_path / "digit.npy"
    np.save(image, load_dataset("mnist5k").test_images[0, 0])
    for source in (tiny_run, tiny_run / "model.safetensors", tiny_run / "checkpoint.safetensors"):
        code, out, err = invoke(capsys, "evaluate", source)
        assert code == 0 and "mnist5k test set: accuracy" in out, err
        code, out, err = invoke(capsys, "predict", source, image)
        assert code == 0 and out.startswith(f"{image}: "), err
        code, out, err = invoke(capsys, "summary", source)
        assert code == 0 and "total parameters" in out, err
    if importlib.util.find_spec("onnx"):
        code, out, err = invoke(capsys, "export", tiny_run, tmp_path / "m.onnx")
        assert code == 0 and stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o644, err


def test_run_files_get_normal_permissions(tiny_run):
    # the subprocess ran with the test runner's umask, 022 unless changed
    umask = os.umask(0)
    os.umask(umask)
    for path in tiny_run.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_validation_divergence_stops_training_with_exit_1(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: {"loss": float("nan")})
    code, _, err = invoke(capsys, "train", *TINY, "--epochs", "1", "--out", tmp_path / "r")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("convnp train: training stopped: epoch 1: the validation loss is not")
    assert "no checkpoint was written" in err


def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(capsys, tmp_path, monkeypatch):
    writes = []

    def fsync_until_the_disk_is_full(descriptor):
        writes.append(descriptor)
        if len(writes) > 3:  # epoch 1 wrote its checkpoint and history (3 files)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", fsync_until_the_disk_is_full)
    out = tmp_path / "r"
    code, _, err = invoke(capsys, "train", *TINY, "--epochs", "3", "--out", out)
    monkeypatch.undo()
    assert code == 1 and err.count("\n") == 1, err
    assert "training stopped: cannot write to" in err and "No space left on device" in err
    assert f"the last good checkpoint is {out / 'checkpoint.safetensors'}" in err
    assert len(io.resume(out)[2]) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors", "history.csv", "history.json"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data-dir", "nowhere"], "argument --data-dir: nowhere: no such folder"),
        (["train", "--val-split", "2.5"], "must be a count (e.g. 5000) or a fraction"),
        (["train", "--val-split", "4000"], "validation size 4000 leaves no training images"),
        (["train", "--lr", "inf"], "argument --lr: must be > 0 (a number), got 'inf'"),
        (["train", "--momentum", "nan"], "argument --momentum: must be in [0, 1)"),
        (["train", "--seed", "-1"], "argument --seed: must be >= 0 (an integer below 2**63)"),
        (["train", "--epochs", "2147483648"], "must be >= 1 (an integer up to 2147483647)"),
        (["train", "--out", ""], "argument --out: expected a path, got ''"),
        (["train", "--resume", "nowhere"], "--resume nowhere: no such file or folder"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["evaluate", "nowhere"], "nowhere: no such file or folder"),
        (["summary", "nowhere", "--model", "lenet5"], "give a model file or --model, not both"),
        (["export", "m", "out.onnx", "--opset", "9999"], "--opset 9999: the installed onnx"),
        (["plot", "nowhere", "--image", "-3"], "argument --image: must be >= 0"),
    ],
)
def test_user_mistakes_end_in_exactly_one_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    if "--opset" in args:
        pytest.importorskip("onnx")
    code, out, err = invoke(capsys, *args)
    prefix = "convnp: error: " if args[-1] == "--bogus" else f"convnp {args[0]}: error: "
    assert code == 2 and err.count("\n") == 1 and err.startswith(prefix), err
    assert message in err and not (tmp_path / "runs").exists()


def test_no_command_and_version(capsys):
    code, _, err = invoke(capsys)
    assert code == 2 and err == (
        "convnp: error: give a command (train, evaluate, predict, summary, gradcheck, export, "
        "plot, report, bench); see convnp --help\n"
    )
    code, out, _ = invoke(capsys, "--version")
    assert code == 0 and out == f"convnp {convnp.__version__}\n"


def test_summary_prints_the_training_memory_for_an_input_shape_and_batch():
    result = run("summary", "--model", "modern", "--input-shape", "3,32,32", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert "Conv2d(3, 32" in result.stdout  # built for 3-channel input
    assert "training memory, batch 8 (MiB):" in result.stdout
    assert "estimated total" in result.stdout
    bad = run("summary", "--model", "modern", "--input-shape", "3,x")
    assert bad.returncode != 0 and "expected positive integers like 3,32,32" in bad.stderr


def test_a_run_from_before_the_run_record_still_resumes(capsys, tiny_run, tmp_path):
    import safetensors.numpy

    run_dir = tmp_path / "old"
    shutil.copytree(tiny_run, run_dir)
    path = run_dir / "checkpoint.safetensors"
    with safetensors.safe_open(path, "np") as stream:
        metadata = stream.metadata()
        tensors = {name: stream.get_tensor(name) for name in stream.keys()}  # noqa: SIM118
    info = json.loads(metadata["info"])
    old_keys = (
        *("dataset", "model", "input_shape", "class_names", "loss", "normalize", "batch_size"),
        *("epochs", "seed", "schedule", "warmup", "base_lr", "augment"),
    )
    metadata["info"] = json.dumps({k: info[k] for k in old_keys if k in info})  # no schema_version
    safetensors.numpy.save_file(tensors, path, metadata=metadata)
    code, out, err = invoke(capsys, "train", "--resume", run_dir, "--epochs", "2")
    assert code == 0, err
    assert "4000 training images, no validation split" in out  # as it was trained
    _, info, _ = runs.load_model(run_dir)
    assert info.schema_version == 0 and info.val_was_test and info.epochs == 2
