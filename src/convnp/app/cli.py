"""The ``convnp`` command line: train, evaluate, predict, summary, gradcheck, export, plot,
report.

Each ``cmd_*`` function is a thin call into the library. User mistakes (a bad option value,
a missing or corrupt file, an unusable output path) end with one ``convnp[ <command>]:
error: ...`` line and exit code 2, checked before any work starts, never a traceback or a
usage block. A run that stops (divergence, a failed write) ends in one ``convnp train:
training stopped: ...`` line and exit code 1, and keeps its last good checkpoint. Run
folders, the run record and the model resolver are ``convnp.runs``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from convnp import __version__, io, runs, schedules, train
from convnp.app import architectures, zoo
from convnp.data import (
    DATASETS,
    DataLoader,
    Dataset,
    augment,
    default_val_size,
    images,
    load_dataset,
    train_val_split,
)
from convnp.gradcheck import gradcheck
from convnp.interop import onnx as onnx_export
from convnp.model import Sequential
from convnp.optim import Optimizer
from convnp.runtime import distributed
from convnp.runtime.allocator import keep_freed_memory
from convnp.runtime.parallel import available_cores, predict_in_blocks

DEFAULT_MODEL = "bouvrie"
DEFAULT_DATA = "mnist5k"
RUNS_ROOT = "runs"
MAX_COUNT = 2**31 - 1  # epochs, batch size, steps...: what a model file may record
COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "summary",
    "gradcheck",
    "export",
    "plot",
    "report",
    "bench",
)
_MODEL_HELP = "a model file, a checkpoint or a run folder"
# `convnp train` trains on every core through MPI ranks when mpi4py is installed: measured on
# 2 cores (bouvrie, mnist5k, 10 epochs) 17 s instead of 62 s in one threaded process. The
# environment variable CONVNP_PROCS overrides this default (as OMP_NUM_THREADS does BLAS's).
DEFAULT_PROCS = "auto"
# What convnp exits with (``main``); MPI ranks end with these too (3: the watchdog found the
# ranks waiting too long for one another). Any other code from the ranks is MPI's or the OS's.
EXIT_CODES = (0, 1, 2, 3, 130)


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


# -- building blocks shared by the subcommands ------------------------------------------
def _make_optimizer(args: argparse.Namespace, recipe: zoo.Recipe, model: Sequential) -> Optimizer:
    name = args.optimizer or recipe.optimizer
    momentum = recipe.momentum if args.momentum is None else args.momentum
    if name != "sgd" and (args.momentum is not None or args.nesterov):
        raise UsageError(f"--momentum and --nesterov apply to SGD, and this run uses {name}")
    if args.nesterov and momentum == 0:
        raise UsageError(f"--nesterov needs --momentum > 0 ({recipe.name} uses {momentum})")
    return recipe.make_optimizer(model, optimizer=args.optimizer, lr=args.lr,
                                 momentum=args.momentum, weight_decay=args.weight_decay,
                                 nesterov=args.nesterov)  # fmt: skip


def _load_data(
    name: str, data_dir: str | None, comm: distributed.Communicator | None = None
) -> Dataset:
    """The data set; of the MPI ranks on one machine, one writes its decompressed copy."""
    dataset = load_dataset(name, data_dir=data_dir,
                           keep_decompressed=comm is None or comm.node_rank == 0)  # fmt: skip
    if data_dir is not None and name == "mnist5k":
        print(f"note: --data-dir {data_dir} is not used: mnist5k is bundled with convnp")
    return dataset


def _loaders(
    dataset: Dataset, info: runs.RunInfo
) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    """Shuffled, augmented (if the recipe says so) training batches; plain validation
    batches (None without a validation split) and test batches, normalised with the
    training split's statistics. The split is a function of (data, val_size, seed)."""
    train_index, val_index = train_val_split(dataset.train_labels, info.val_size or 0,
                                             seed=info.seed or 0)  # fmt: skip
    kind = info.normalize.get("kind")
    train_loader = DataLoader(
        dataset.train_images,
        dataset.train_labels,
        indices=train_index,  # the split is read where it lies: no copy of the images
        batch_size=info.batch_size,
        shuffle=True,
        seed=info.seed or 0,
        normalize=kind,
        transform=None if info.augment is None else augment.build(info.augment),
    )

    def plain(images: np.ndarray, labels: np.ndarray, indices: Any = None) -> DataLoader:
        return DataLoader(images, labels, batch_size=1000, shuffle=False, normalize=kind,
                          mean=train_loader.mean, std=train_loader.std,
                          indices=indices)  # fmt: skip

    val_loader = None
    if len(val_index):
        val_loader = plain(dataset.train_images, dataset.train_labels, val_index)
    return train_loader, val_loader, plain(dataset.test_images, dataset.test_labels)


def _build_model(
    args: argparse.Namespace, input_shape: tuple[int, ...], classes: int, rng: np.random.Generator
) -> tuple[Sequential, zoo.Recipe]:
    if args.arch is None and args.config is None:
        recipe = zoo.get_recipe(args.model or DEFAULT_MODEL)
        return recipe.build(input_shape, classes, rng=rng), recipe
    if args.arch is not None:
        model = architectures.from_string(args.arch, input_shape, classes, rng=rng)
    else:
        model = architectures.from_toml(args.config, rng=rng)
    uses_sigmoid_output = type(model[-1]).__name__ == "Sigmoid"
    loss = "squared_error" if uses_sigmoid_output else "cross_entropy"
    return model, zoo.custom_recipe(args.arch or args.config, loss=loss)


def _run_info(
    args: argparse.Namespace, dataset: Dataset, recipe: zoo.Recipe, optimizer: Optimizer
) -> runs.RunInfo:
    """Everything a resume, ``evaluate`` or ``predict`` needs to know about this run."""
    train_size = len(dataset.train_labels)
    val_size = default_val_size(train_size) if args.val_split is None else args.val_split
    _, val_index = train_val_split(dataset.train_labels, val_size, seed=args.seed or 0)
    return runs.RunInfo(
        model=recipe.name,
        architecture=args.arch or args.config,
        dataset=dataset.name,
        data_source=dataset.source,
        input_shape=list(dataset.train_images.shape[1:]),
        class_names=list(dataset.class_names),
        loss=recipe.loss,
        normalize={"kind": recipe.normalize},
        batch_size=args.batch_size or recipe.batch_size,
        epochs=args.epochs or recipe.epochs,
        seed=args.seed or 0,
        schedule=args.schedule or recipe.schedule,
        warmup=args.warmup or 0,
        base_lr=optimizer.lr,
        augment=recipe.extra.get("augment"),
        train_size=train_size - len(val_index),
        val_size=len(val_index),
        test_size=len(dataset.test_labels),
        sync_batch_norm=args.sync_batchnorm,
        command=args.command_line,
        versions=runs.current_versions(),
    )


#: Options that set up a new run; a resumed run keeps what its checkpoint recorded.
_NEW_RUN_OPTIONS = (
    *("model", "arch", "config", "data", "val_split", "seed", "batch_size", "schedule", "warmup"),
    *("lr", "optimizer", "momentum", "weight_decay", "nesterov", "sync_batchnorm"),
)


def _new_run(
    args: argparse.Namespace, comm: distributed.Communicator | None = None
) -> tuple[Any, ...]:
    out = None if args.out is None else _checked_out_dir(args.out)  # before any work
    dataset = _load_data(args.data or DEFAULT_DATA, args.data_dir, comm)
    rng = np.random.default_rng(args.seed or 0)
    model, recipe = _build_model(args, dataset.train_images.shape[1:], dataset.num_classes, rng)
    optimizer = _make_optimizer(args, recipe, model)
    info = _run_info(args, dataset, recipe, optimizer)
    if comm is not None and not comm.is_root:
        out = Path(comm.broadcast(None))  # rank 0 alone makes the run folder
    elif out is None:
        out = runs.new_run_dir(RUNS_ROOT, info.model)
        latest = runs.link_latest(out)
        print(f"run folder {out} ({latest} points to it)")
    else:
        out.mkdir(parents=True, exist_ok=True)
    if comm is not None and comm.is_root:
        comm.broadcast(str(out))
    return model, optimizer, [], info, dataset, out, info.epochs


def _resume_run(
    args: argparse.Namespace, comm: distributed.Communicator | None = None
) -> tuple[Any, ...]:
    given = [name for name in _NEW_RUN_OPTIONS if getattr(args, name) not in (None, False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(
            f"{flags} cannot be combined with --resume: a resumed run keeps the settings it "
            "recorded (--epochs, --out, --data-dir and --quiet apply)"
        )
    source = Path(args.resume)
    if not source.exists():
        raise UsageError(f"--resume {source}: no such file or folder")
    run_dir = source if source.is_dir() else source.parent
    out = run_dir if args.out is None else _checked_out_dir(args.out)
    for leftover in runs.remove_leftover_temporaries(run_dir):
        print(f"removed {leftover.name}, left by an interrupted write")
    model, optimizer, history, stored = io.resume(source)
    try:
        info = runs.RunInfo.from_dict(stored)
    except ValueError as error:
        raise UsageError(f"{source}: {error}") from None
    dataset = _load_data(info.dataset or DEFAULT_DATA, args.data_dir, comm)
    if info.val_size is None:  # a run from before the validation split: all training images
        info.train_size, info.val_size = len(dataset.train_labels), 0
        info.test_size = len(dataset.test_labels)
    elif len(dataset.train_labels) != info.train_size + info.val_size:
        raise UsageError(
            f"{dataset.name} from {dataset.source} has {len(dataset.train_labels)} training "
            f"images; the run was trained on a copy with {info.train_size + info.val_size}"
        )
    done, planned = len(history), info.epochs or len(history)
    epochs = args.epochs or planned
    finished = done >= epochs and (out / io.MODEL_NAME).is_file()
    if epochs < done or finished:
        raise UsageError(
            f"{source} has already trained {done} epochs; pass --epochs N with N > {done} "
            "to extend it"
        )
    print(f"resuming {source} after epoch {done} of {epochs}; output in {out}")
    info.epochs = epochs
    return model, optimizer, history, info, dataset, out, planned


def _checked_out_dir(text: str) -> Path:
    try:
        return runs.check_out_dir(text)
    except runs.RunFolderError as error:
        raise UsageError(f"--out {error}") from None


def _stop_message(out: Path, reason: str) -> str:
    checkpoint = out / io.CHECKPOINT_NAME
    kept = (
        f"the last good checkpoint is {checkpoint}"
        if checkpoint.is_file()
        else "no checkpoint was written (the first epoch did not finish)"
    )
    return f"convnp train: training stopped: {_one_line(reason)}; {kept}"


# -- subcommands --------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace, comm: distributed.Communicator | None = None) -> int:
    started = time.perf_counter()
    setup = _resume_run(args, comm) if args.resume else _new_run(args, comm)
    model, optimizer, history, info, dataset, out, planned = setup
    if comm is not None and info.sync_batch_norm:  # one process: the batch is global already
        distributed.sync_batch_norm(model, comm)
    train_loader, val_loader, test_loader = _loaders(dataset, info)
    statistics = {"mean": train_loader.mean, "std": train_loader.std}
    info.normalize = {"kind": info.normalize.get("kind")} | {
        key: None if value is None else value.tolist() for key, value in statistics.items()
    }
    schedule = schedules.make_schedule(
        info.schedule, info.base_lr, info.epochs * len(train_loader), info.warmup
    )
    if info.epochs != planned:
        print(
            f"the run was planned for {planned} epochs and now runs {info.epochs}: its "
            f"{info.schedule} schedule is re-planned over {info.epochs} epochs, {schedule!r}; "
            f"lr {optimizer.lr:.3g} at the last step, {schedule(optimizer.step_count):.3g} "
            "at the next"
        )
    loss = zoo.make_loss(info.loss)
    held_out = (
        f"{info.val_size} validation images held out of them (seed {info.seed})"
        if info.val_size
        else "no validation split"
    )
    print(
        f"data: {dataset.name} from {dataset.source}: {info.train_size} training images, "
        f"{held_out}; {info.test_size} test images, evaluated once at the end"
    )
    print(
        f"training {info.model} for {info.epochs} epochs, batch {info.batch_size}, "
        f"{optimizer!r}; output in {out}"
    )
    try:
        history = train.fit(
            model,
            loss,
            optimizer,
            train_loader,
            epochs=info.epochs,
            val=val_loader,
            schedule=schedule,
            out_dir=out,
            history=history,
            info=info.to_dict(),
            progress=not args.quiet,
            comm=comm,
        )
        result = train.evaluate(model, test_loader, loss, dataset.num_classes, comm=comm)
        if comm is not None and not comm.is_root:
            return 0  # rank 0 alone writes the model
        info.test_accuracy, info.test_loss = result["accuracy"], float(result["loss"])
        io.save(model, out / io.MODEL_NAME, info.to_dict())
    except train.TrainingDiverged as error:
        print(_stop_message(out, str(error)), file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a folder made read-only: what was saved stays
        print(_stop_message(out, f"cannot write to {out}: {error}"), file=sys.stderr)
        return 1
    print(
        f"test accuracy {result['accuracy']:.4f} (loss {result['loss']:.4f}) on "
        f"{result['count']} {dataset.name} test images after {len(history)} epochs "
        f"in {time.perf_counter() - started:.1f}s"
    )
    print(f"model saved to {out / io.MODEL_NAME}")
    if args.report:
        print(f"report written to {_write_report(out, out / 'report.html', args.data_dir)}")
    _print_next_commands(out)
    return 0


def _print_next_commands(out: Path) -> None:
    model_file = out / io.MODEL_NAME
    commands = [
        (f"convnp evaluate {model_file}", "accuracy, loss, confusion matrix"),
        (f"convnp predict {model_file} IMAGE.png", "classify your own images"),
        (f"convnp plot {out} {out / 'figures'}", "curves, kernels, feature maps (PNG)"),
        (f"convnp report {out}", "all of it on one HTML page"),
    ]
    width = max(len(command) for command, _ in commands)
    print("next:")
    for command, what in commands:
        print(f"  {command:<{width}}  # {what}")


# -- `convnp train` on several processes (MPI ranks) ------------------------------------
def cmd_train_ranks(args: argparse.Namespace) -> int:
    """``convnp train`` in one process, as one of the MPI ranks that ``mpiexec``/``srun``
    started, or launching ``mpiexec`` itself for ``--procs`` > 1."""
    if not distributed.launched_by_mpi():
        procs = _resolve_procs(args.procs or _default_procs())
        if procs == 1:
            return cmd_train(args)
        print(f"training on {procs} MPI ranks (mpiexec -n {procs}); --procs 1 for one process")
        sys.stdout.flush()
        command = [sys.executable, "-m", "convnp", *args.argv]
        code = distributed.launch(command, procs, blas_threads=max(1, available_cores() // procs))
        if code not in EXIT_CODES:
            print(f"convnp: the {procs} ranks ended with exit code {code}, not one of convnp's "
                  "own (MPI failed, or a rank was killed); checkpoints written so far are "
                  "intact. If MPI cannot run on this machine, train in one process: --procs 1 "
                  "(or CONVNP_PROCS=1)", file=sys.stderr)  # fmt: skip
        return code
    comm = distributed.Communicator(timeout=args.mpi_timeout, balance=args.balance)
    if isinstance(args.procs, int) and args.procs != comm.size:
        raise UsageError(f"--procs {args.procs}, but mpiexec started {comm.size} ranks")
    try:
        with comm.abort_on_error(agreed=(distributed.MismatchError,)), _root_prints(comm):
            return cmd_train(args, comm)
    except distributed.MismatchError as error:
        if comm.is_root:
            print(f"convnp: error: {error}", file=sys.stderr)
        return 2


def _resolve_procs(procs: int | str) -> int:
    """``--procs`` as a number of ranks: ``auto`` is every core when MPI is installed."""
    if procs == "auto":
        return available_cores() if distributed.mpi_available() else 1
    if procs > 1 and not distributed.mpi_available():
        raise UsageError(f"--procs {procs} needs mpi4py and mpiexec: pip install 'convnp[mpi]'")
    return procs


@contextlib.contextmanager
def _root_prints(comm: distributed.Communicator) -> Any:
    """Silence stdout and stderr on every rank but 0 (a failing rank reports through
    ``Communicator.abort``, which writes to the real stderr)."""
    if comm.is_root:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):  # fmt: skip
        yield


def _procs(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _default_procs() -> int | str:
    text = os.environ.get("CONVNP_PROCS", DEFAULT_PROCS)
    try:
        return _procs(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise UsageError(f"CONVNP_PROCS must be a positive number or auto, got {text!r}") from None


def _load_model(path: str) -> tuple[Sequential, runs.RunInfo]:
    """A model file, a checkpoint or a run folder alike (``convnp.runs.load_model``)."""
    model, info, _ = runs.load_model(path)
    return model, info


def _loader_like_training(
    images: np.ndarray, labels: np.ndarray, info: runs.RunInfo, model: Sequential
) -> DataLoader:
    """Batches normalised exactly as the model's training data was (recorded in its info)."""
    settings = info.normalize
    return DataLoader(
        images,
        labels,
        batch_size=1000,
        shuffle=False,
        normalize=settings.get("kind", "unit"),
        mean=settings.get("mean"),
        std=settings.get("std"),
        dtype=model.dtype,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, info = _load_model(args.model_file)
    dataset = _load_data(args.data or info.dataset or DEFAULT_DATA, args.data_dir)
    loader = _loader_like_training(dataset.test_images, dataset.test_labels, info, model)
    result = train.evaluate(model, loader, zoo.make_loss(info.loss), dataset.num_classes)
    print(
        f"{dataset.name} test set: accuracy {result['accuracy']:.4f}, "
        f"loss {result['loss']:.4f}, {result['count']} images (from {dataset.source})"
    )
    print(_confusion_table(result["confusion"], dataset.class_names))
    return 0


def _confusion_table(confusion: np.ndarray, names: Sequence[str]) -> str:
    """Rows: true class (index and name); columns: predicted class (index), both headed."""
    corner = "true \\ predicted"
    labels = [f"{index} {name}" for index, name in enumerate(names)]
    first = max(len(corner), *map(len, labels)) + 1
    cell = max(4, len(str(int(confusion.max(initial=0)))) + 1)
    lines = ["confusion matrix (rows: true class, columns: predicted class):"]
    lines.append(f"  {corner:<{first}}" + "".join(f"{i:>{cell}}" for i in range(len(names))))
    for label, row in zip(labels, confusion):
        lines.append(f"  {label:<{first}}" + "".join(f"{int(v):>{cell}}" for v in row))
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify each file (an image, an (H, W)/(C, H, W) array or an (N, C, H, W) batch); a
    file that cannot be read is reported and the others are still predicted (exit 2 then)."""
    model, info = _load_model(args.model_file)
    shape = tuple(info.input_shape or (1, 28, 28))
    batches, labels, failed = [], [], []
    for path in args.images:
        try:
            batch, notes = images.read_images(path, shape)
        except (ValueError, FileNotFoundError) as error:
            print(f"convnp predict: error: {_one_line(error)}", file=sys.stderr)
            failed.append(path)
            continue
        for note in notes:
            print(f"note: {path}: {note}")
        batches.append(batch)
        labels += [path] if len(batch) == 1 else [f"{path}[{i}]" for i in range(len(batch))]
    if batches:
        x_all = np.concatenate(batches)
        loader = _loader_like_training(x_all, np.zeros(len(x_all), np.int64), info, model)
        y = np.concatenate([predict_in_blocks(model, x) for x, _ in loader])
        names = info.class_names or [str(i) for i in range(y.shape[1])]
        kind = info.loss
        scores, label = train.output_scores(kind, y)
        decisions = train.predicted_classes(zoo.make_loss(kind), y)
        for name, row, best in zip(labels, scores, decisions):
            ranked = np.argsort(-row)[:3]
            print(f"{name}: {names[best]} ({label}: "
                  + ", ".join(f"{names[i]}={row[i]:.3f}" for i in ranked) + ")")  # fmt: skip
    if failed:
        names = _one_line(", ".join(failed))
        print(
            f"convnp predict: error: {len(failed)} of {len(args.images)} files could not be "
            f"read: {names}",
            file=sys.stderr,
        )
        return 2
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    batch_size = args.batch_size or 64
    if args.model_file and args.model:
        raise UsageError("give a model file or --model, not both")
    if args.model_file:
        model, info = _load_model(args.model_file)
        shape = args.input_shape or tuple(info.input_shape or (1, 28, 28))
    else:
        recipe = zoo.get_recipe(args.model or DEFAULT_MODEL)
        shape = args.input_shape or (1, 28, 28)
        model = recipe.build(shape)
        batch_size = args.batch_size or recipe.batch_size
    print(model)
    model.summary(shape)
    model.memory_summary(shape, batch_size)
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    model = zoo.get_recipe(args.model).build(dtype=np.float64, rng=rng)
    x = rng.random((2, 1, 28, 28))
    worst = 0.0
    print(
        f"finite-difference check of {args.model} in float64 "
        f"(relative error, {args.samples} sampled entries per array):"
    )
    for index, layer in enumerate(model):
        if hasattr(layer, "rng"):  # dropout redraws its mask every forward
            print(f"  {index:>2} {layer!r}: random (tested with a fixed mask in the test suite)")
            x = layer.eval().forward(x)
            continue
        errors = gradcheck(layer, x, max_checks=args.samples, rng=rng)
        x = layer.forward(x)
        text = ", ".join(f"{name} {error:.1e}" for name, error in errors.items())
        print(f"  {index:>2} {layer!r}: {text}")
        worst = max(worst, *errors.values())
    print(f"worst relative error {worst:.1e}: {'PASS' if worst < 1e-7 else 'FAIL'} (< 1e-7)")
    return 0 if worst < 1e-7 else 1


def cmd_export(args: argparse.Namespace) -> int:
    _check_output_file(args.out)
    try:
        import onnx.defs
    except ImportError as error:
        raise UsageError(f"export needs onnx: pip install 'convnp[onnx]' ({error})") from None
    if args.opset > onnx.defs.onnx_opset_version():
        raise UsageError(f"--opset {args.opset}: the installed onnx {onnx.__version__} knows "
                         f"opsets up to {onnx.defs.onnx_opset_version()}")  # fmt: skip
    model, info = _load_model(args.model_file)
    shape = tuple(args.input_shape or info.input_shape or (1, 28, 28))
    metadata = {"dataset": info.dataset, "class_names": info.class_names,
                "normalize": info.normalize, "loss": info.loss}  # fmt: skip
    metadata = {key: value for key, value in metadata.items() if value is not None}
    mapping = info.loss if args.probabilities else None
    try:
        onnx_export.to_onnx(model, args.out, shape, opset=args.opset, metadata=metadata,
                            normalize=info.normalize, probabilities=mapping)  # fmt: skip
    except ImportError as error:
        raise UsageError(str(error)) from None
    output = train.output_scores(mapping, np.zeros((1, 1)))[1] if mapping else "network output"
    print(
        f"wrote {args.out}: ONNX opset {args.opset}, input '{onnx_export.INPUT_NAME}' "
        f"(batch, {', '.join(map(str, shape))}): "
        f"{onnx_export.input_scaling(info.normalize)[2]}; "
        f"output '{onnx_export.OUTPUT_NAME}': {output}"
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        from convnp.app import plot
    except ImportError as error:
        raise UsageError(str(error)) from None
    _check_output_dir(args.out)
    data = _load_data(args.data, args.data_dir) if args.data else None
    try:
        written = plot.plot_run(args.run, args.out, image_index=args.image, data=data)
    except ImportError as error:
        raise UsageError(str(error)) from None
    for path in written:
        print(f"wrote {path}")
    return 0


def _write_report(run: Path, out: Path, data_dir: str | None = None) -> Path:
    try:
        from convnp.app import report
    except ImportError as error:
        raise UsageError(str(error)) from None
    try:
        return report.write_report(run, out, data_dir=data_dir)
    except ImportError as error:
        raise UsageError(str(error)) from None


def cmd_report(args: argparse.Namespace) -> int:
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / "report.html"
    print(f"wrote {_write_report(run, out, args.data_dir)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run benchmarks/run.py of this source checkout (it is not part of an installed wheel)."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    script = root / "benchmarks" / "run.py"
    if not script.is_file():
        raise UsageError(
            f"convnp bench runs benchmarks/run.py from a source checkout; not found at {script}"
        )
    return subprocess.run([sys.executable, str(script), *args.passthrough], cwd=root).returncode


def _check_output_file(text: str) -> None:
    """An output file's path is usable before any work starts (an existing file is replaced)."""
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name, e.g. {path / 'model.onnx'}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{path}: {parent} is a file, not a folder")


def _check_output_dir(text: str) -> None:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is an existing file; give a folder")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{path}: {parent} is a file, not a folder")


# -- argument parsing ---------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``<prog>: error: <message>`` (exit 2): no usage
    block, which buries the message (``--help`` still shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def _one_line(text: object) -> str:
    """The message as one line: its lines joined by spaces, and every other character that
    is not printable (a control character in a file name, which str.splitlines would also
    take for a line break) shown as its escape."""
    shown = "".join(
        char if char.isprintable() or char in "\r\n" else char.encode("unicode_escape").decode()
        for char in str(text)
    )
    return " ".join(line.strip() for line in re.split(r"[\r\n]+", shown) if line.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="convnp",
        description="Train and run convolutional networks on NumPy (hand-derived backprop).",
    )
    parser.add_argument("--version", action="version", version=f"convnp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (default: bouvrie on the bundled mnist5k)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--model", choices=list(zoo.RECIPES), help="built-in model (default bouvrie)"
    )
    group.add_argument("--arch", help="architecture string, e.g. 32c3p1-relu-2m-128f-relu")
    group.add_argument("--config", type=_path, help="TOML file listing [[layers]]")
    p.add_argument("--data", choices=DATASETS, help="dataset (default mnist5k)")
    p.add_argument("--data-dir", type=_folder, help="folder holding the dataset's IDX files")
    p.add_argument(
        "--val-split",
        type=_val_split,
        metavar="N|F",
        help="validation images held out of the training set: a count, or a fraction "
        "below 1 (default 10%%, at most 5000; 0: none)",
    )
    p.add_argument("--epochs", type=_positive_int, help="epochs (default: the model's recipe)")
    p.add_argument("--batch-size", type=_positive_int, help="batch size (default: recipe)")
    p.add_argument("--lr", type=_positive_float, help="learning rate (default: recipe)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default: recipe")
    p.add_argument("--momentum", type=_fraction, help="SGD momentum in [0, 1) (default: recipe)")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    p.add_argument("--weight-decay", type=_non_negative_float, help="L2 weight decay (recipe)")
    p.add_argument(
        "--schedule", choices=schedules.SCHEDULES, help="learning-rate schedule (default: recipe)"
    )
    p.add_argument("--warmup", type=_non_negative_int, help="linear warm-up steps (default 0)")
    p.add_argument("--seed", type=_seed, help="random seed: init, shuffling, split (default 0)")
    p.add_argument(
        "--out",
        type=_path,
        help=f"output folder, new or empty (default: a new {RUNS_ROOT}/<model>-<time>)",
    )
    p.add_argument(
        "--resume",
        type=_path,
        metavar="RUN",
        help="continue a run (its folder or checkpoint) in its folder; with --epochs N, extend it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--report", action="store_true", help="also write OUT/report.html")
    p.add_argument("--procs", type=_procs, metavar="N|auto",
                   help="data-parallel MPI ranks, launched with mpiexec (auto: one per core "
                   f"when mpi4py is installed, else 1; default $CONVNP_PROCS or {DEFAULT_PROCS}); "
                   "under mpiexec/srun: the ranks they started")  # fmt: skip
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="on MPI ranks, batch norm's statistics span the global batch "
                   "(PyTorch's SyncBatchNorm) instead of each rank's slice")  # fmt: skip
    p.add_argument("--balance", action="store_true",
                   help="on MPI ranks, split each batch by the ranks' measured speed "
                   "(cores of uneven speed); results then repeat within rounding, not bit "
                   "for bit")  # fmt: skip
    p.add_argument("--mpi-timeout", type=_positive_float, default=distributed.DEFAULT_TIMEOUT,
                   metavar="S", help="abort if the ranks wait S s for each other")  # fmt: skip
    p.set_defaults(handler=cmd_train_ranks)

    p = sub.add_parser("evaluate", help="accuracy, loss and confusion matrix of a saved model")
    p.add_argument("model_file", type=_path, metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("--data", choices=DATASETS, help="dataset (default: the one it trained on)")
    p.add_argument("--data-dir", type=_folder)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images (.png/.jpg need Pillow, or .npy)")
    p.add_argument("model_file", type=_path, metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("images", type=_path, nargs="+", metavar="IMAGE")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("summary", help="layers, output shapes and parameter counts")
    p.add_argument("model_file", type=_path, nargs="?", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("--model", choices=list(zoo.RECIPES), help="a built-in model instead")
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="one input, e.g. 3,32,32")
    p.add_argument("--batch-size", type=_positive_int, help="for the training memory estimate")
    p.set_defaults(handler=cmd_summary)

    p = sub.add_parser("gradcheck", help="finite-difference check of a model's layers")
    p.add_argument("--model", choices=list(zoo.RECIPES), default=DEFAULT_MODEL)
    p.add_argument("--samples", type=_positive_int, default=20, help="entries checked per array")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(handler=cmd_gradcheck)

    p = sub.add_parser("export", help="write a saved model as an ONNX file (needs convnp[onnx])")
    p.add_argument("model_file", type=_path, metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("out", type=_path, metavar="OUT.onnx", help="replaced if it exists")
    p.add_argument(
        "--input-shape",
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="one input without the batch axis, e.g. 1 28 28 (default: as trained)",
    )
    p.add_argument(
        "--opset",
        type=_opset,
        default=onnx_export.OPSET,
        help=f"ONNX opset (>= {onnx_export.OPSET}, at most what the installed onnx knows)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="append the scores `convnp predict` prints (softmax, or softmax of -RBF energies)",
    )
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("plot", help="PNG figures of a run: curves, kernels, maps, confusion")
    p.add_argument("run", type=_path, metavar="RUN", help=_MODEL_HELP)
    p.add_argument("out", type=_path, metavar="OUT_DIR", nargs="?", default="figures")
    p.add_argument(
        "--image", type=_non_negative_int, default=0, help="test image for the feature maps"
    )
    p.add_argument("--data", choices=DATASETS, help="test data (default: as trained)")
    p.add_argument("--data-dir", type=_folder)
    p.set_defaults(handler=cmd_plot)

    p = sub.add_parser("report", help="one self-contained HTML page about a run")
    p.add_argument("run", metavar="RUN", help="run folder (or model file) from convnp train")
    p.add_argument("out", metavar="OUT.html", nargs="?", help="default RUN/report.html")
    p.add_argument("--data-dir", help="folder holding the dataset's IDX files")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser(
        "bench",
        help="convnp vs PyTorch speed and memory (benchmarks/run.py; options as its --help)",
        add_help=False,  # --help goes to the benchmark script
    )
    p.set_defaults(handler=cmd_bench)  # its options are passed through unparsed
    return parser


def _shape(text: str) -> tuple[int, ...]:
    """'3,32,32' -> (3, 32, 32): one input's shape without the batch axis."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 3,32,32, got {text!r}")
    return shape


def _number(text: str, kind: type, condition: str, accept: Any) -> Any:
    """``text`` as an int or finite float satisfying ``accept``; else a message in CLI terms."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not accept(value):
        raise argparse.ArgumentTypeError(f"must be {condition}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, f">= 1 (an integer up to {MAX_COUNT})", lambda v: 1 <= v <= MAX_COUNT)


def _non_negative_int(text: str) -> int:
    return _number(text, int, f">= 0 (an integer up to {MAX_COUNT})", lambda v: 0 <= v <= MAX_COUNT)


def _seed(text: str) -> int:
    return _number(text, int, ">= 0 (an integer below 2**63)", lambda v: 0 <= v < 2**63)


def _positive_float(text: str) -> float:
    return _number(text, float, "> 0 (a number)", lambda value: value > 0)


def _non_negative_float(text: str) -> float:
    return _number(text, float, ">= 0 (a number)", lambda value: value >= 0)


def _fraction(text: str) -> float:
    return _number(text, float, "in [0, 1)", lambda value: 0 <= value < 1)


def _opset(text: str) -> int:
    return _number(text, int, f">= {onnx_export.OPSET} (an integer)",
                   lambda value: value >= onnx_export.OPSET)  # fmt: skip


def _val_split(text: str) -> int | float:
    """A count (``5000``) or a fraction below 1 (``0.1``) of the training images."""
    if text.strip().lstrip("+").isdigit():
        return int(text)
    return _number(text, float, "a count (e.g. 5000) or a fraction in [0, 1) (e.g. 0.1)",
                   lambda value: 0 <= value < 1)  # fmt: skip


def _path(text: str) -> str:
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


def _folder(text: str) -> str:
    if not Path(_path(text)).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (``EXIT_CODES``): 0 done, 1 training stopped or
    failed, 2 a user mistake (one ``convnp[ <command>]: error: ...`` line), 3 MPI ranks that
    waited too long for one another, 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()  # reuse each step's large temporaries instead of page-faulting anew
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        parser.error(f"give a command ({', '.join(COMMANDS)}); see convnp --help")
    if args.command == "bench":
        args.passthrough = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.command_line = ["convnp", *argv]
    args.argv = argv  # for --procs to relaunch
    try:
        return args.handler(args)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, ValueError, OSError) as error:
        print(f"convnp {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convnp: interrupted; checkpoints written so far are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
