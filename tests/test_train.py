"""fit/evaluate: learning happens, checkpoints are atomic and resumable bit-for-bit,
divergence stops cleanly with the last good checkpoint kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convnp import io, train
from convnp.app.architectures import from_string
from convnp.data import DataLoader, load_dataset
from convnp.losses import CrossEntropyLoss
from convnp.optim import SGD, Adam
from convnp.schedules import CosineLR


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("mnist5k")
    keep = np.arange(0, 4000, 8)  # 500 training images, 50 per class
    return data.train_images[keep], data.train_labels[keep], data.test_images, data.test_labels


def _setup(digits, seed=0, optimizer="adam"):
    images, labels, test_images, test_labels = digits
    model = from_string("4c5-relu-2m-16f-relu", rng=np.random.default_rng(seed))
    loader = DataLoader(images, labels, batch_size=25, seed=seed)
    val = DataLoader(test_images[:200], test_labels[:200], batch_size=100, shuffle=False)
    if optimizer == "adam":
        opt = Adam(model.parameters(), lr=3e-3)
    else:
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, loader, val, opt


def test_fit_learns_and_records_history(digits, tmp_path):
    model, loader, val, opt = _setup(digits)
    history = train.fit(model, CrossEntropyLoss(), opt, loader, epochs=3, val=val,
                        out_dir=tmp_path, progress=False)  # fmt: skip
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.6
    assert set(history[0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                               "seconds", "images_per_second"}  # fmt: skip
    assert json.loads((tmp_path / "history.json").read_text()) == history
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 4
    assert (tmp_path / io.CHECKPOINT_NAME).is_file()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_mid_way_equals_uninterrupted_run(digits, tmp_path, optimizer):
    loss = CrossEntropyLoss()
    model, loader, _, opt = _setup(digits, optimizer=optimizer)
    schedule = CosineLR(opt.lr, total_steps=4 * len(loader), warmup_steps=5)
    train.fit(model, loss, opt, loader, epochs=4, schedule=schedule, progress=False)

    interrupted, loader2, _, opt2 = _setup(digits, optimizer=optimizer)
    train.fit(interrupted, loss, opt2, loader2, epochs=2, schedule=schedule,
              out_dir=tmp_path, progress=False)  # fmt: skip
    resumed, opt3, history, _ = io.resume(tmp_path)
    assert len(history) == 2
    _, fresh_loader, _, _ = _setup(digits, optimizer=optimizer)
    train.fit(resumed, loss, opt3, fresh_loader, epochs=4, schedule=schedule, history=history,
              progress=False)  # fmt: skip
    for (name, expected, _), (_, got, _) in zip(model.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_divergence_stops_cleanly_and_keeps_last_good_checkpoint(digits, tmp_path):
    model, loader, _, _ = _setup(digits)
    opt = SGD(model.parameters(), lr=0.05)
    train.fit(model, CrossEntropyLoss(), opt, loader, epochs=1, out_dir=tmp_path, progress=False)
    checkpoint = (tmp_path / io.CHECKPOINT_NAME).read_bytes()
    opt.lr = 1e30
    with pytest.raises(train.TrainingDiverged, match=r"epoch 2: .*(NaN|inf)"):
        train.fit(model, CrossEntropyLoss(), opt, loader, epochs=2, out_dir=tmp_path,
                  history=[{"epoch": 1}], progress=False)  # fmt: skip
    assert (tmp_path / io.CHECKPOINT_NAME).read_bytes() == checkpoint
    restored, _, history, _ = io.resume(tmp_path)
    assert all(np.isfinite(p).all() for _, p, _ in restored.parameters())
    assert len(history) == 1


def test_divergence_message_names_the_layer(digits):
    model, loader, _, opt = _setup(digits)
    model[0].params["weight"][0, 0, 0, 0] = np.inf
    x, labels = next(iter(loader))
    with pytest.raises(train.TrainingDiverged, match=r"Conv2d\(1, 4"):
        train.fit(model, CrossEntropyLoss(), opt, [(x, labels)], epochs=1, progress=False)


def test_non_finite_input_batch_stops_training_naming_the_input(digits):
    """The model's entry check (Sequential.forward) stops the step; the message says the
    batch itself, not a layer, holds the NaN."""
    model, loader, _, opt = _setup(digits)
    x, labels = next(iter(loader))
    x = x.copy()
    x[3, 0, 5, 5] = np.nan
    with pytest.raises(train.TrainingDiverged, match="epoch 1: the input batch contains NaN"):
        train.fit(model, CrossEntropyLoss(), opt, [(x, labels)], epochs=1, progress=False)


def test_evaluate_confusion_matrix(digits):
    model, _, val, _ = _setup(digits)
    result = train.evaluate(model, val, CrossEntropyLoss(), num_classes=10)
    confusion = result["confusion"]
    assert confusion.shape == (10, 10) and confusion.sum() == result["count"] == 200
    assert result["accuracy"] == pytest.approx(np.trace(confusion) / 200)
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(digits[3][:200], minlength=10))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / io.CHECKPOINT_NAME
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="checkpoint.safetensors"):
        io.resume(tmp_path)


def test_an_update_that_overflows_stops_at_once_and_is_never_checkpointed(digits, tmp_path):
    model, loader, _, _ = _setup(digits)
    opt = SGD(model.parameters(), lr=0.05)
    train.fit(model, CrossEntropyLoss(), opt, loader, epochs=1, out_dir=tmp_path, progress=False)
    checkpoint = (tmp_path / io.CHECKPOINT_NAME).read_bytes()
    batches = list(loader)

    class OverflowOnLastStep:  # the epoch's last update overflows: the old trainer saved it
        def __iter__(self):
            yield from batches[:-1]
            opt.lr = 1e39  # finite gradients, but lr·gradient overflows float32
            yield batches[-1]

    with pytest.raises(train.TrainingDiverged, match=r"epoch 2: the update made '\d+\.\w+' NaN"):
        train.fit(model, CrossEntropyLoss(), opt, OverflowOnLastStep(), epochs=2,
                  out_dir=tmp_path, history=[{"epoch": 1}], progress=False)  # fmt: skip
    assert opt.step_count == 2 * len(batches)
    assert (tmp_path / io.CHECKPOINT_NAME).read_bytes() == checkpoint


def test_a_checkpoint_never_holds_nan_or_inf(digits, tmp_path):
    model, loader, _, opt = _setup(digits)
    batches = list(loader)[:2]

    class PoisonedLastStep:  # the step is finite, but a buffer overflows (Adam's v, say)
        def __iter__(self):
            yield from batches
            opt.state_dict = lambda: {"v.0.weight": np.array([np.inf], np.float32)}

    with pytest.raises(train.TrainingDiverged, match="optimizer state 'v.0.weight' holds NaN"):
        train.fit(model, CrossEntropyLoss(), opt, PoisonedLastStep(), epochs=1,
                  out_dir=tmp_path, progress=False)  # fmt: skip
    assert not (tmp_path / io.CHECKPOINT_NAME).exists()


def test_a_divergence_first_seen_at_validation_is_a_divergence(digits, tmp_path):
    model, loader, _, opt = _setup(digits)
    huge = np.full((10, 1, 28, 28), 3e38, np.float32)  # finite inputs whose outputs overflow
    val = DataLoader(huge, np.zeros(10, np.int64), batch_size=5, shuffle=False, normalize=None)
    with pytest.raises(train.TrainingDiverged, match="epoch 1: the validation loss is not finite"):
        train.fit(model, CrossEntropyLoss(), opt, loader, epochs=1, val=val, out_dir=tmp_path,
                  progress=False)  # fmt: skip
    assert not (tmp_path / io.CHECKPOINT_NAME).exists()


def test_resuming_rewrites_history_files_left_behind_the_checkpoint(digits, tmp_path):
    """A kill between the checkpoint and the history files leaves history.json one epoch
    behind; the resumed run (here with nothing left to train) rewrites it from the
    checkpoint's history."""
    model, loader, _, opt = _setup(digits)
    train.fit(model, CrossEntropyLoss(), opt, loader, epochs=2, out_dir=tmp_path, progress=False)
    full = json.loads((tmp_path / "history.json").read_text())
    train.write_history(tmp_path, full[:1])  # as if killed before the second history write
    model, opt, history, _ = io.resume(tmp_path)
    train.fit(model, CrossEntropyLoss(), opt, loader, epochs=2, out_dir=tmp_path,
              history=history, progress=False)  # fmt: skip
    assert json.loads((tmp_path / "history.json").read_text()) == full
    assert (tmp_path / "history.csv").read_text().count("\n") == 3  # header and two epochs
