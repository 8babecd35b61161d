"""Training and evaluation: the loop of SPEC §1 and Caffe's solver, in plain sight.

One step is four lines (``train_step``): forward, loss, backward, optimizer step. Around
them ``fit`` adds what a dependable trainer needs: a progress bar, per-epoch history, a
clean stop when the loss or a gradient stops being finite (naming the layer), and an
atomic checkpoint after every epoch from which ``resume`` continues bit-for-bit.
"""

from __future__ import annotations

import csv
import io as io_module
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from convnp import io
from convnp.layers.base import NonFiniteInputError
from convnp.model import Sequential
from convnp.optim import SGD, Adam, Optimizer

if TYPE_CHECKING:
    from convnp.runtime.distributed import Communicator

CHECKPOINT_FORMAT = "convnp-checkpoint"
CHECKPOINT_NAME = "checkpoint.safetensors"
MODEL_NAME = "model.safetensors"
OPTIMIZERS: dict[str, type[Optimizer]] = {"SGD": SGD, "Adam": Adam}


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf; the message names where it appeared first."""


def predicted_classes(loss: Any, y: np.ndarray) -> np.ndarray:
    """Class decisions for network outputs: the loss's own rule if it has one, else argmax."""
    decide = getattr(loss, "predictions", None)
    return decide(y) if decide is not None else y.argmax(axis=1)


def train_step(
    model: Sequential,
    loss: Any,
    optimizer: Optimizer,
    x: np.ndarray,
    t: Any,
    comm: Communicator | None = None,
) -> tuple[np.ndarray, float]:
    """One step on batch (x, t); returns the network output and the loss E.

    With ``comm`` (MPI ranks), (x, t) is the global batch: each rank runs forward and
    backward on its slice and the gradients, outputs and loss are summed over the ranks
    (``convnp.runtime.distributed``).
    """
    if comm is not None:
        y, error = comm.forward_backward(model, loss, x, t)
    else:
        y = model.forward(x)  # x^L: the network's output
        error = loss.forward(y, t)  # E
        model.backward(loss.backward(), input_grad=False)  # δ^L = ∂E/∂y, layers in reverse
    error += model.apply_regularizers()  # attached penalties add their value and gradient
    _stop_if_not_finite(model, x, error)
    optimizer.step()  # the solver turns gradients into updates
    return y, error


def _stop_if_not_finite(model: Sequential, x: np.ndarray, error: float) -> None:
    if not np.isfinite(error):
        raise TrainingDiverged(f"the loss is {error}; {_first_non_finite_output(model, x)}")
    for index, layer in enumerate(model):
        for key, grad in layer.grads.items():
            if not np.isfinite(grad).all():
                raise TrainingDiverged(
                    f"the gradient of '{index}.{key}' in layer {index} ({layer!r}) contains "
                    "NaN or inf; try a smaller learning rate"
                )


def _first_non_finite_output(model: Sequential, x: np.ndarray) -> str:
    """Re-run the batch layer by layer (eval mode) to find where non-finite values start."""
    was_training = model.training
    model.eval()
    try:
        for index, layer in enumerate(model):
            with np.errstate(over="ignore", invalid="ignore"):
                x = layer.forward(x)
            if not np.isfinite(x).all():
                return f"layer {index} ({layer!r}) is the first to output NaN or inf"
    except NonFiniteInputError as error:
        return f"the input batch is not finite: {error}" if index == 0 else str(error)
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

    With ``comm`` (MPI ranks), each rank runs the network on its slice of every batch and
    every rank gets the whole batch's outputs, so all of them return the same figures.
    """
    was_training = model.training
    model.eval()
    total_loss, count = 0.0, 0
    true_parts, predicted_parts = [], []
    try:
        for x, labels in batches:
            y = model.forward(x) if comm is None else comm.forward(model, x)
            total_loss += loss.forward(y, labels) * _loss_weight(loss, len(x))
            count += len(x)
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
    resume. ``schedule(step)`` sets the optimizer's lr before every step. With ``out_dir``,
    a checkpoint is written atomically after each epoch (plus history.csv/json); ``history``
    passed back from ``resume`` continues an interrupted run.

    ``comm`` (``convnp.runtime.distributed.Communicator``) trains data-parallel on MPI ranks:
    every rank calls ``fit`` with the same arguments; each trains on its slice of every
    batch, all end with the same weights and history, and rank 0 alone shows progress and
    writes files. Inputs that differ between ranks are refused at the start.
    """
    history = list(history or [])
    if comm is not None:
        comm.start(model, optimizer, train, info=info, history=history, val=val)
        progress, out_dir = progress and comm.is_root, out_dir if comm.is_root else None
    out = Path(out_dir) if out_dir is not None else None
    for epoch in range(len(history), epochs):
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        if comm is not None:
            comm.start_epoch(model, epoch)
        model.train()
        started = time.perf_counter()
        total_loss, correct, count = 0.0, 0, 0
        bar = tqdm(
            iter(train),  # once: tqdm.auto's class also calls iter() on what it is given
            total=len(train) if hasattr(train, "__len__") else None,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="batch",
            disable=not progress,
            leave=True,
            mininterval=0.5,
            dynamic_ncols=True,
        )
        for x, labels in bar:
            if schedule is not None:
                optimizer.lr = schedule(optimizer.step_count)
            try:
                # overflow is detected and reported below; NumPy's warnings would only add noise
                with np.errstate(over="ignore", invalid="ignore"):
                    y, error = train_step(model, loss, optimizer, x, labels, comm)
            except NonFiniteInputError:
                where = _first_non_finite_output(model, x)
                raise TrainingDiverged(f"epoch {epoch + 1}: {where}") from None
            except TrainingDiverged as cause:
                raise TrainingDiverged(f"epoch {epoch + 1}: {cause}") from None
            total_loss += error * _loss_weight(loss, len(x))
            correct += int((predicted_classes(loss, y) == np.asarray(labels)).sum())
            count += len(x)
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
            result = evaluate(model, val, loss, comm=comm)
            record["val_loss"] = result["loss"]
            record["val_accuracy"] = result["accuracy"]
        history.append(record)
        if progress:
            tqdm.write(_format_record(record))
        if out is not None:
            save_checkpoint(out / CHECKPOINT_NAME, model, optimizer, history, info)
            write_history(out, history)
    return history


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


# -- checkpoints ------------------------------------------------------------------------
def _rng_states(model: Sequential) -> dict[str, Any]:
    """Bit-generator states of layers that draw random numbers while training (dropout)."""
    return {
        str(index): layer.rng.bit_generator.state
        for index, layer in enumerate(model)
        if isinstance(getattr(layer, "rng", None), np.random.Generator)
    }


def save_checkpoint(
    path: str | Path,
    model: Sequential,
    optimizer: Optimizer,
    history: list[dict[str, Any]],
    info: dict[str, Any] | None = None,
) -> None:
    """Model, optimizer state, history and layer RNG states in one safetensors file."""
    tensors = {f"model/{key}": value for key, value in model.state_dict().items()}
    tensors.update({f"optimizer/{key}": value for key, value in optimizer.state_dict().items()})
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(io.FORMAT_VERSION),
        "dtype": str(model.dtype),
        "architecture": json.dumps(io.architecture(model)),
        "optimizer": json.dumps({"type": type(optimizer).__name__, "config": optimizer.config()}),
        "history": json.dumps(history),
        "rng_states": json.dumps(_rng_states(model)),
        "info": json.dumps(info or {}),
    }
    io.save_tensors(path, tensors, metadata)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Parse a checkpoint: model (rebuilt), optimizer spec and state, history, info."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    tensors, metadata = io.load_tensors(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a convnp checkpoint")
    try:
        model = io.build(json.loads(metadata["architecture"]), dtype=metadata["dtype"])
        model.load_state_dict(_with_prefix(tensors, "model/"))
        for index, state in json.loads(metadata["rng_states"]).items():
            model[int(index)].rng.bit_generator.state = state
        return {
            "model": model,
            "optimizer": json.loads(metadata["optimizer"]),
            "optimizer_state": _with_prefix(tensors, "optimizer/"),
            "history": json.loads(metadata["history"]),
            "info": json.loads(metadata["info"]),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: corrupt checkpoint ({error})") from None


def resume(path: str | Path) -> tuple[Sequential, Optimizer, list[dict[str, Any]], dict[str, Any]]:
    """Model, optimizer (with its state), history and info from a checkpoint, ready for
    ``fit(..., history=history)`` to continue exactly where the run stopped."""
    checkpoint = load_checkpoint(path)
    model = checkpoint["model"]
    spec = checkpoint["optimizer"]
    if spec.get("type") not in OPTIMIZERS:
        raise ValueError(f"{path}: unknown optimizer {spec.get('type')!r} in checkpoint")
    optimizer = OPTIMIZERS[spec["type"]](model.parameters(), **spec["config"])
    optimizer.load_state_dict(checkpoint["optimizer_state"])
    return model, optimizer, checkpoint["history"], checkpoint["info"]


def _with_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
