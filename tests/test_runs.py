"""Run folders, the typed run record and the one resolver of trained models (convnp.runs)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from convnp import io, runs
from convnp.app.architectures import from_string
from convnp.optim import SGD
from convnp.runs import RunInfo

LEGACY_INFO = {  # an info dict as convnp wrote it before RunInfo existed
    "dataset": "mnist5k",
    "model": "custom",
    "input_shape": [1, 28, 28],
    "class_names": list("0123456789"),
    "loss": "cross_entropy",
    "normalize": {"kind": "standardize", "mean": [33.3], "std": [78.5]},
    "batch_size": 128,
    "epochs": 2,
    "seed": 3,
    "schedule": "cosine",
    "warmup": 0,
    "base_lr": 0.001,
    "augment": None,
    "test_accuracy": 0.8,
}


def test_run_info_round_trips_and_keeps_unknown_keys():
    info = RunInfo(model="lenet5", dataset="mnist", input_shape=[1, 28, 28], val_size=5000,
                   versions=runs.current_versions(), extra={"note": "from a plugin"})  # fmt: skip
    stored = info.to_dict()
    assert stored["schema_version"] == runs.SCHEMA_VERSION and stored["note"] == "from a plugin"
    assert "test_accuracy" not in stored and "class_names" not in stored  # unknown: left out
    assert RunInfo.from_dict(stored) == info
    assert RunInfo.from_dict({**stored, "test_accuracy": None}) == info  # null reads as unknown


def test_a_plain_info_dict_from_before_the_schema_still_loads():
    info = RunInfo.from_dict(LEGACY_INFO)
    assert info.schema_version == 0 and info.val_was_test
    assert info.normalize["mean"] == [33.3] and info.test_accuracy == 0.8
    assert info.val_size is None
    assert not RunInfo.from_dict(RunInfo().to_dict()).val_was_test


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_shape": "abc"}, "info.input_shape must be a list of positive integers"),
        ({"class_names": [1, 2]}, "info.class_names must be a list of strings"),
        ({"epochs": -1}, "info.epochs must be an integer >= 0"),
        ({"seed": True}, "info.seed must be an integer >= 0"),
        ({"base_lr": "0.1"}, "info.base_lr must be a finite number"),
        ({"normalize": "unit"}, "info.normalize must be an object"),
        ({"normalize": {"kind": "zscore"}}, "info.normalize.kind must be"),
        ({"normalize": {"kind": "standardize", "mean": ["x"]}}, "info.normalize.mean"),
        ({"schema_version": 99}, "schema_version is 99; this convnp reads 0..1"),
        ({"schema_version": "1"}, "schema_version is '1'"),
    ],
)
def test_malformed_run_info_names_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        RunInfo.from_dict({**LEGACY_INFO, **change})
    with pytest.raises(ValueError, match="info must be a JSON object, got list"):
        RunInfo.from_dict([])


def test_check_out_dir_refuses_files_and_other_runs(tmp_path):
    assert runs.check_out_dir(tmp_path / "new") == tmp_path / "new"
    assert runs.check_out_dir(tmp_path) == tmp_path  # empty: fine
    (tmp_path / "notes.txt").write_text("x")
    assert runs.check_out_dir(tmp_path) == tmp_path  # unrelated files: fine
    with pytest.raises(runs.RunFolderError, match="notes.txt is an existing file"):
        runs.check_out_dir(tmp_path / "notes.txt")
    with pytest.raises(runs.RunFolderError, match="lies inside the file"):
        runs.check_out_dir(tmp_path / "notes.txt" / "run")
    (tmp_path / "history.json").write_text("[]")
    with pytest.raises(runs.RunFolderError, match="holds another run.*--resume"):
        runs.check_out_dir(tmp_path)


def test_new_run_dirs_are_unique_even_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.time, "strftime", lambda _: "20260101-120000")  # a frozen clock
    folders = [runs.new_run_dir(tmp_path / "runs", "modern") for _ in range(3)]
    assert [folder.name for folder in folders] == [
        "modern-20260101-120000", "modern-20260101-120000-2", "modern-20260101-120000-3"
    ]  # fmt: skip
    assert all(folder.is_dir() for folder in folders)


def test_latest_links_to_the_newest_run(tmp_path):
    first, second = (runs.new_run_dir(tmp_path, "m") for _ in range(2))
    assert runs.link_latest(first) == tmp_path / "latest"
    assert runs.link_latest(second) == tmp_path / "latest"
    assert (tmp_path / "latest").resolve() == second.resolve()
    assert os.readlink(tmp_path / "latest") == second.name  # relative: the tree can move


def test_latest_falls_back_to_a_text_file_and_never_touches_a_real_folder(tmp_path):
    (tmp_path / "latest").mkdir()  # an older convnp's output folder
    (tmp_path / "latest" / "model.safetensors").write_bytes(b"keep me")
    run = runs.new_run_dir(tmp_path, "m")
    assert runs.link_latest(run) == tmp_path / "latest.txt"
    assert (tmp_path / "latest.txt").read_text() == f"{run.name}\n"
    assert (tmp_path / "latest" / "model.safetensors").read_bytes() == b"keep me"
    assert not list(tmp_path.glob(".latest*"))


def test_latest_falls_back_to_a_text_file_where_links_cannot_be_made(tmp_path, monkeypatch):
    def no_links(self, target, target_is_directory=False):
        raise OSError("symbolic links are not supported here")

    monkeypatch.setattr(runs.Path, "symlink_to", no_links)
    run = runs.new_run_dir(tmp_path, "m")
    assert runs.link_latest(run) == tmp_path / "latest.txt"
    assert (tmp_path / "latest.txt").read_text() == f"{run.name}\n"
    assert not (tmp_path / "latest").exists()


def test_leftover_temporaries_of_run_files_are_removed_and_nothing_else(tmp_path):
    leftovers = [tmp_path / ".checkpoint.safetensors.1a2b.tmp", tmp_path / ".history.json.x.tmp"]
    kept = [tmp_path / ".notes.txt.x.tmp", tmp_path / "checkpoint.safetensors"]
    for path in leftovers + kept:
        path.write_bytes(b"partial")
    assert sorted(runs.remove_leftover_temporaries(tmp_path)) == sorted(leftovers)
    assert all(path.exists() for path in kept) and not any(p.exists() for p in leftovers)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_permissions_open_would_give(tmp_path, umask):
    previous = os.umask(umask)
    try:
        io.write_atomic(tmp_path / "history.json", b"[]")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "history.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


@pytest.fixture
def finished_run(tmp_path):
    """A run folder with a checkpoint (after 1 epoch) and a model file holding other weights."""
    model = from_string("2c5-2m-10f", rng=np.random.default_rng(0))
    info = RunInfo(model="custom", dataset="mnist5k", input_shape=[1, 28, 28], val_size=10)
    io.save_checkpoint(tmp_path / io.CHECKPOINT_NAME, model, SGD(model.parameters(), lr=0.1),
                          [{"epoch": 1}], info.to_dict())  # fmt: skip
    checkpointed = model[0].params["weight"].copy()
    model[0].params["weight"] += 1.0
    io.save(model, tmp_path / io.MODEL_NAME, {**info.to_dict(), "test_accuracy": 0.5})
    return tmp_path, model, checkpointed


def test_load_model_accepts_a_model_file_a_checkpoint_or_a_run_folder(finished_run):
    folder, model, checkpointed = finished_run
    from_folder, info, file = runs.load_model(folder)
    assert file == folder / io.MODEL_NAME and info.test_accuracy == 0.5
    np.testing.assert_array_equal(from_folder[0].params["weight"], model[0].params["weight"])
    from_file, _, _ = runs.load_model(folder / io.MODEL_NAME)
    np.testing.assert_array_equal(from_file[0].params["weight"], model[0].params["weight"])
    from_checkpoint, info, _ = runs.load_model(folder / io.CHECKPOINT_NAME)
    np.testing.assert_array_equal(from_checkpoint[0].params["weight"], checkpointed)
    assert info.val_size == 10 and info.test_accuracy is None
    (folder / io.MODEL_NAME).unlink()  # an unfinished run: its checkpoint
    assert runs.load_model(folder)[2] == folder / io.CHECKPOINT_NAME


def test_load_model_errors_name_the_path(finished_run, tmp_path_factory):
    folder, _, _ = finished_run
    with pytest.raises(FileNotFoundError, match="absent: no such file or folder"):
        runs.load_model(folder / "absent")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match=f"{empty}: not a run folder"):
        runs.load_model(empty)
    io.save(from_string("2c5-2m-10f"), folder / "bad.safetensors", {"input_shape": "abc"})
    with pytest.raises(ValueError, match=r"bad.safetensors: info.input_shape must be"):
        runs.load_model(folder / "bad.safetensors")
