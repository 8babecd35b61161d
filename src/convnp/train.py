"""Training and evaluation: the loop of SPEC §1 and Caffe's solver, in plain sight.

One step is four lines (``train_step``): forward, loss, backward, optimizer step. Around
them ``fit`` adds what a dependable trainer needs: a progress bar, per-epoch history, a
clean stop when the loss or a gradient stops being finite (naming the layer), and an
atomic checkpoint after every epoch (``convnp.io.save_checkpoint``) from which
``convnp.io.resume`` continues bit-for-bit.
"""

from __future__ import annotations

import csv
import io as io_module
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convnp import io
from convnp.layers.base import NonFiniteInputError, first_non_finite, surely_finite
from convnp.losses import LOSSES
from convnp.model import Sequential
from convnp.optim import Optimizer
from convnp.runtime.parallel import predict_in_blocks

if TYPE_CHECKING:
    from convnp.runtime.distributed import Communicator


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf; the message names where it appeared first."""


def predicted_classes(loss: Any, y: np.ndarray) -> np.ndarray:
    """Class decisions for network outputs: the loss's own rule if it has one, else argmax."""
    decide = getattr(loss, "predictions", None)
    return decide(y) if decide is not None else y.argmax(axis=1)


def output_scores(loss_kind: str, y: np.ndarray) -> tuple[np.ndarray, str]:
    """Per-class scores for network outputs y, as ``convnp predict`` reports them, and what
    they are: "probabilities" (softmax of the logits for "cross_entropy", softmax of minus
    the RBF energies for "rbf", so the most probable class is argmin of the energies) or
    "outputs" (a squared-error network's sigmoid outputs, used as they are)."""
    if loss_kind == "squared_error":
        return y, "outputs"
    return LOSSES[loss_kind].class_probabilities(y), "probabilities"


def _refuse_arrays(batches: Any) -> None:
    """``fit`` takes batches; arrays (or an (x, y) pair of them) get a message naming the
    calls that take arrays, instead of a confusing failure inside the loop."""
    pair = isinstance(batches, tuple | list) and len(batches) == 2
    if isinstance(batches, np.ndarray) or (pair and isinstance(batches[0], np.ndarray)):
        raise TypeError(
            "fit: `train` must yield (x, labels) batches, not arrays; for arrays call "
            "model.fit(x, y, epochs=..., batch_size=...), or pass "
            "convnp.data.DataLoader(x, y, batch_size) here"
        )


def train_step(
    model: Sequential,
    loss: Any,
    optimizer: Optimizer,
    x: np.ndarray,
    t: Any,
    comm: Communicator | None = None,
) -> tuple[np.ndarray, float]:
    """One step on batch (x, t); returns the network output and the loss E.

    With ``comm`` (MPI ranks), x is this rank's slice of the global batch and t the whole
    batch's targets (``Communicator.batches`` yields them so): each rank runs forward and
    backward on its slice and the gradients, outputs and loss are summed over the ranks
    (``convnp.runtime.distributed``); y is the whole batch's output.
    """
    if comm is not None:
        y, error = comm.forward_backward(model, loss, x, t)
    else:
        y = model.forward(x)  # x^L: the network's output
        error = loss.forward(y, t)  # E
        model.backward(loss.backward(), input_grad=False)  # δ^L = ∂E/∂y, layers in reverse
    error += model.apply_regularizers()  # attached penalties add their value and gradient
    _stop_if_not_finite(model, x, error, comm)
    optimizer.step()  # the solver turns gradients into updates
    _stop_if_update_not_finite(model)
    return y, error


def _stop_if_not_finite(
    model: Sequential, x: np.ndarray, error: float, comm: Communicator | None = None
) -> None:
    if not np.isfinite(error):  # E is summed over the ranks: all of them are here
        where = _first_non_finite_output(model, _whole_batch(x, comm))
        raise TrainingDiverged(f"the loss is {error}; {where}")
    if surely_finite(grad for layer in model for grad in layer.grads.values()):
        return  # the common case, one quick test; otherwise find the layer to name
    for index, layer in enumerate(model):
        key = first_non_finite(layer.grads)
        if key is not None:
            raise TrainingDiverged(
                f"the gradient of '{index}.{key}' in layer {index} ({layer!r}) contains "
                "NaN or inf; try a smaller learning rate"
            )


def _stop_if_update_not_finite(model: Sequential) -> None:
    """Finite gradients can still give an update that overflows (a huge lr, float32)."""
    if surely_finite(param for layer in model for param in layer.params.values()):
        return
    name = first_non_finite({name: param for name, param, _ in model.parameters()})
    if name is not None:
        raise TrainingDiverged(
            f"the update made '{name}' NaN or inf (its gradient was finite; the step "
            "overflowed); try a smaller learning rate"
        )


def _rank_batches(batches: Iterable[Any], comm: Communicator | None) -> Iterator[Any]:
    """The next epoch of ``batches`` as this process reads it: whole batches in one
    process; with ``comm``, this rank's slice of each batch's inputs and all its labels."""
    return iter(batches) if comm is None else comm.batches(batches)


def _whole_batch(x: np.ndarray, comm: Communicator | None) -> np.ndarray:
    """The global batch of which x is this rank's slice (x itself in one process), so that
    every rank diagnoses a divergence on the same samples (a collective: all ranks call it)."""
    return x if comm is None else comm.gather(x)


def _first_non_finite_output(model: Sequential, x: np.ndarray) -> str:
    """Re-run the batch layer by layer (eval mode) to find where non-finite values start."""
    was_training = model.training
    if not np.isfinite(x).all():
        return "the input batch contains NaN or inf"
    model.eval()
    try:
        for index, layer in enumerate(model):
            with np.errstate(over="ignore", invalid="ignore"):
                x = layer.forward(x)
            if not np.isfinite(x).all():
                return f"layer {index} ({layer!r}) is the first to output NaN or inf"
    finally:
        model.train(was_training)
    return "every layer's output is finite, so the loss itself overflowed"


def evaluate(
    model: Sequential,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    loss: Any,
    num_classes: int | None = None,
    comm: Communicator | None = None,
) -> dict[str, Any]:
    """Mean loss, accuracy and the confusion matrix (rows: true class, columns: predicted).

    With ``comm`` (MPI ranks), each rank reads and runs the network on its slice of every
    batch (``Communicator.batches``) and every rank gets the whole batch's outputs, so all
    of them return the same figures.
    """
    was_training = model.training
    model.eval()
    total_loss, count = 0.0, 0
    true_parts, predicted_parts = [], []
    try:
        for x, labels in _rank_batches(batches, comm):
            n = len(labels)
            with model.no_grad():  # no backward follows: the layers keep nothing
                y = predict_in_blocks(model, x) if comm is None else comm.forward(model, x, n)
            total_loss += loss.forward(y, labels) * _loss_weight(loss, n)
            count += n
            true_parts.append(np.asarray(labels))
            predicted_parts.append(predicted_classes(loss, y))
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: no data")
    true = np.concatenate(true_parts)
    predicted = np.concatenate(predicted_parts)
    classes = num_classes or int(max(true.max(), predicted.max()) + 1)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    return {
        "loss": total_loss / count,
        "accuracy": float((true == predicted).mean()),
        "confusion": confusion,
        "count": count,
    }


def _loss_weight(loss: Any, batch_size: int) -> int:
    """Factor that turns a batch's loss into a sum over its samples."""
    return batch_size if getattr(loss, "reduction", "mean") == "mean" else 1


def fit(
    model: Sequential,
    loss: Any,
    optimizer: Optimizer,
    train: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    epochs: int,
    val: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
    schedule: Callable[[int], float] | None = None,
    out_dir: str | Path | None = None,
    history: list[dict[str, Any]] | None = None,
    info: dict[str, Any] | None = None,
    progress: bool = True,
    comm: Communicator | None = None,
) -> list[dict[str, Any]]:
    """Train until ``epochs`` epochs are complete; returns the per-epoch history.

    ``train`` yields (x, labels) batches; if it has ``set_epoch(e)`` it is called first, so
    a loader whose shuffling is a function of (seed, epoch) replays the same batches after a
    resume. ``val`` is a validation set held out of the training data
    (``convnp.data.train_val_split``), evaluated after every epoch; keep the test set for one
    evaluation after training. ``schedule(step)`` sets the optimizer's lr before every step.
    Training stops with ``TrainingDiverged`` as soon as the loss, a gradient, a weight after
    the update or the validation loss is NaN/inf; a checkpoint never holds NaN/inf. With
    ``out_dir``,
    a checkpoint is written atomically after each epoch (plus history.csv/json); ``history``
    passed back from ``resume`` continues an interrupted run.

    ``comm`` (``convnp.runtime.distributed.Communicator``) trains data-parallel on MPI ranks:
    every rank calls ``fit`` with the same arguments; each trains on its slice of every
    batch, all end with the same weights and history, and rank 0 alone shows progress and
    writes files. Inputs that differ between ranks are refused at the start.
    """
    _refuse_arrays(train)
    history = list(history or [])
    if comm is not None:
        comm.start(model, optimizer, train, info=info, history=history, val=val)
        progress, out_dir = progress and comm.is_root, out_dir if comm.is_root else None
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and history:
        # the checkpoint's history is the truth: a kill between writing the checkpoint and
        # the history files left them one epoch behind
        write_history(out, history)
    for epoch in range(len(history), epochs):
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        if comm is not None:
            comm.start_epoch(model, epoch)
        model.train()
        started = time.perf_counter()
        total_loss, correct, count = 0.0, 0, 0
        batches = _rank_batches(train, comm)
        bar = _progress_bar(batches, _length(train), f"epoch {epoch + 1}/{epochs}", progress)
        for x, labels in bar:
            if schedule is not None:
                optimizer.lr = schedule(optimizer.step_count)
            try:
                # overflow is detected and reported below; NumPy's warnings would only add noise
                with np.errstate(over="ignore", invalid="ignore"):
                    y, error = train_step(model, loss, optimizer, x, labels, comm)
            except NonFiniteInputError:
                where = _first_non_finite_output(model, _whole_batch(x, comm))
                raise TrainingDiverged(f"epoch {epoch + 1}: {where}") from None
            except TrainingDiverged as cause:
                raise TrainingDiverged(f"epoch {epoch + 1}: {cause}") from None
            n = len(labels)
            total_loss += error * _loss_weight(loss, n)
            correct += int((predicted_classes(loss, y) == np.asarray(labels)).sum())
            count += n
            seconds = time.perf_counter() - started
            bar.set_postfix(
                loss=f"{total_loss / count:.4f}",
                acc=f"{correct / count:.4f}",
                img_s=f"{count / max(seconds, 1e-9):.0f}",
                refresh=False,
            )
        bar.close()
        if comm is not None:
            comm.end_epoch(model)
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(count, 1),
            "train_accuracy": correct / max(count, 1),
            "lr": optimizer.lr,
            "seconds": seconds,
            "images_per_second": count / max(seconds, 1e-9),
        }
        if val is not None:
            result = _validate(model, val, loss, epoch, comm)
            record["val_loss"] = result["loss"]
            record["val_accuracy"] = result["accuracy"]
        history.append(record)
        if progress:
            bar.write(_format_record(record))
        if out is not None:
            _refuse_non_finite_checkpoint(model, optimizer, epoch)
            io.save_checkpoint(out / io.CHECKPOINT_NAME, model, optimizer, history, info)
            write_history(out, history)
    return history


class _NoProgress:
    """What ``fit`` uses of a tqdm bar, doing nothing: a run without progress (MPI ranks
    other than 0, ``progress=False``) does not import tqdm.auto, which with asyncio adds
    ~11 MB to the process."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self._batches = batches

    def __iter__(self) -> Iterator[Any]:
        return iter(self._batches)

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _length(batches: Iterable[Any]) -> int | None:
    return len(batches) if hasattr(batches, "__len__") else None


def _progress_bar(
    batches: Iterator[Any], total: int | None, description: str, progress: bool
) -> Any:
    """A tqdm bar over one epoch's batches (tqdm.auto: a widget in notebooks), or none."""
    if not progress:
        return _NoProgress(batches)
    from tqdm.auto import tqdm

    return tqdm(
        batches,
        total=total,
        desc=description,
        unit="batch",
        leave=True,
        mininterval=0.5,
        dynamic_ncols=True,
    )


def _validate(
    model: Sequential,
    val: Iterable[tuple[np.ndarray, np.ndarray]],
    loss: Any,
    epoch: int,
    comm: Communicator | None = None,
) -> dict[str, Any]:
    """``evaluate`` on the validation batches; a non-finite result is a divergence."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            result = evaluate(model, val, loss, comm=comm)
    except NonFiniteInputError as error:
        result = {"loss": float("nan"), "error": str(error)}
    if np.isfinite(result["loss"]):
        return result
    where = result.get("error") or "; ".join(
        dict.fromkeys(_first_non_finite_output(model, x) for x, _ in val)
    )
    raise TrainingDiverged(
        f"epoch {epoch + 1}: the validation loss is not finite (the weights are, but their "
        f"outputs overflow): {where}"
    )


def _refuse_non_finite_checkpoint(model: Sequential, optimizer: Optimizer, epoch: int) -> None:
    """A checkpoint is "last good": it never holds NaN or inf."""
    tensors = {"weight": model.state_dict(), "optimizer state": optimizer.state_dict()}
    for what, arrays in tensors.items():
        name = first_non_finite(arrays)
        if name is not None:
            raise TrainingDiverged(f"epoch {epoch + 1}: the {what} '{name}' holds NaN or inf")


def _format_record(record: dict[str, Any]) -> str:
    text = (
        f"epoch {record['epoch']}: loss {record['train_loss']:.4f} "
        f"acc {record['train_accuracy']:.4f}"
    )
    if "val_accuracy" in record:
        text += f" | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}"
    return text + f" | {record['seconds']:.1f}s ({record['images_per_second']:.0f} img/s)"


def write_history(out_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """history.json and history.csv (one row per epoch), each written atomically."""
    out = Path(out_dir)
    io.write_atomic(out / "history.json", json.dumps(history, indent=2).encode())
    columns = list(dict.fromkeys(key for record in history for key in record))
    table = io_module.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    io.write_atomic(out / "history.csv", table.getvalue().encode())
