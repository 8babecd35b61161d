"""The ``convnp`` command line: train, evaluate, predict, summary, gradcheck, export, plot,
report.

Each ``cmd_*`` function is a thin call into the library. User mistakes (a bad option value,
a missing or corrupt file) end with one ``convnp: error: ...`` line and exit code 2, never
a traceback; a diverged run exits 1 and keeps its last good checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convnp import io, schedules, train
from convnp.app import architectures, zoo
from convnp.data import DATASETS, DataLoader, augment, load_dataset
from convnp.gradcheck import gradcheck
from convnp.interop import onnx as onnx_export
from convnp.model import Sequential
from convnp.optim import Optimizer
from convnp.runtime.allocator import keep_freed_memory

DEFAULT_MODEL = "bouvrie"
DEFAULT_DATA = "mnist5k"


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


# -- building blocks shared by the subcommands ------------------------------------------
def _make_optimizer(args: argparse.Namespace, recipe: zoo.Recipe, model: Sequential) -> Optimizer:
    return recipe.make_optimizer(model, optimizer=args.optimizer, lr=args.lr,
                                 momentum=args.momentum, weight_decay=args.weight_decay,
                                 nesterov=args.nesterov)  # fmt: skip


def _make_schedule(name: str, lr: float, total_steps: int, warmup: int) -> schedules.Schedule:
    options = {"warmup_steps": warmup}
    if name == "constant":
        return schedules.ConstantLR(lr, **options)
    if name == "step":
        return schedules.StepLR(lr, step_size=max(total_steps // 3, 1), gamma=0.1, **options)
    if name == "exponential":
        return schedules.ExponentialLR(lr, gamma=0.01 ** (1 / max(total_steps, 1)), **options)
    if name == "inv":
        return schedules.InvLR(lr, gamma=1e-4, power=0.75, **options)
    return schedules.CosineLR(lr, total_steps=max(total_steps - warmup, 1), **options)


def _loaders(dataset: Any, info: dict[str, Any]) -> tuple[Any, Any]:
    """Shuffled, augmented (if the recipe says so) training batches; plain test batches."""
    spec = info.get("augment")
    train_loader = DataLoader(
        dataset.train_images,
        dataset.train_labels,
        batch_size=info["batch_size"],
        shuffle=True,
        seed=info["seed"],
        normalize=info["normalize"]["kind"],
        transform=None if spec is None else augment.build(spec),
    )
    test_loader = DataLoader(
        dataset.test_images,
        dataset.test_labels,
        batch_size=1000,
        shuffle=False,
        normalize=info["normalize"]["kind"],
        mean=train_loader.mean,
        std=train_loader.std,
    )
    return train_loader, test_loader


def _build_model(
    args: argparse.Namespace, input_shape: tuple[int, ...], classes: int, rng: np.random.Generator
) -> tuple[Sequential, zoo.Recipe]:
    recipe = zoo.get_recipe(args.model or DEFAULT_MODEL)
    if args.arch:
        model = architectures.from_string(args.arch, input_shape, classes, rng=rng)
        uses_sigmoid_output = type(model[-1]).__name__ == "Sigmoid"
        custom = dict(name="custom", architecture=args.arch, description=args.arch)
        custom.update(loss="squared_error" if uses_sigmoid_output else "cross_entropy")
        if not args.model:
            recipe = zoo.Recipe(**{**zoo.RECIPES["modern"].__dict__, **custom})
        return model, recipe
    if args.config:
        model = architectures.from_toml(args.config, rng=rng)
        return model, zoo.Recipe(**{**zoo.RECIPES["modern"].__dict__, "name": "custom"})
    return recipe.build(input_shape, classes, rng=rng), recipe


def _run_info(
    args: argparse.Namespace, dataset: Any, recipe: zoo.Recipe, optimizer: Optimizer
) -> dict[str, Any]:
    """Everything a resume, ``evaluate`` or ``predict`` needs to know about this run."""
    return {
        "dataset": dataset.name,
        "model": recipe.name,
        "input_shape": list(dataset.train_images.shape[1:]),
        "class_names": list(dataset.class_names),
        "loss": recipe.loss,
        "normalize": {"kind": recipe.normalize},
        "batch_size": args.batch_size or recipe.batch_size,
        "epochs": args.epochs or recipe.epochs,
        "seed": args.seed,
        "schedule": args.schedule or recipe.schedule,
        "warmup": args.warmup,
        "base_lr": optimizer.lr,
        "augment": recipe.extra.get("augment"),
    }


# -- subcommands --------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    if args.resume:
        model, optimizer, history, info = train.resume(args.resume)
        dataset = load_dataset(info["dataset"], data_dir=args.data_dir)
        print(f"resuming {args.resume} after epoch {len(history)}")
    else:
        dataset = load_dataset(args.data, data_dir=args.data_dir)
        rng = np.random.default_rng(args.seed)
        input_shape = dataset.train_images.shape[1:]
        model, recipe = _build_model(args, input_shape, dataset.num_classes, rng)
        optimizer = _make_optimizer(args, recipe, model)
        history, info = [], _run_info(args, dataset, recipe, optimizer)
    epochs = args.epochs or info["epochs"]
    train_loader, test_loader = _loaders(dataset, info)
    statistics = {"mean": train_loader.mean, "std": train_loader.std}
    info["normalize"].update({k: None if v is None else v.tolist() for k, v in statistics.items()})
    total_steps = epochs * len(train_loader)
    schedule = _make_schedule(info["schedule"], info["base_lr"], total_steps, info["warmup"])
    loss = zoo.make_loss(info["loss"])
    print(
        f"training {info['model']} on {dataset.name}: {len(dataset.train_labels)} images, "
        f"{epochs} epochs, batch {info['batch_size']}, {optimizer!r}; output in {out}"
    )
    try:
        history = train.fit(
            model,
            loss,
            optimizer,
            train_loader,
            epochs=epochs,
            val=test_loader,
            schedule=schedule,
            out_dir=out,
            history=history,
            info=info,
            progress=not args.quiet,
        )
    except train.TrainingDiverged as error:
        print(f"convnp: training stopped: {error}", file=sys.stderr)
        print(
            f"convnp: the last good checkpoint is in {out / train.CHECKPOINT_NAME}", file=sys.stderr
        )
        return 1
    result = train.evaluate(model, test_loader, loss, dataset.num_classes)
    info["test_accuracy"] = result["accuracy"]
    io.save(model, out / train.MODEL_NAME, info)
    print(
        f"test accuracy {result['accuracy']:.4f} (loss {result['loss']:.4f}) on "
        f"{result['count']} {dataset.name} test images after {len(history)} epochs "
        f"in {time.perf_counter() - started:.1f}s"
    )
    print(f"model saved to {out / train.MODEL_NAME}")
    if args.report:
        print(f"report written to {_write_report(out, out / 'report.html', args.data_dir)}")
    _print_next_commands(out)
    return 0


def _print_next_commands(out: Path) -> None:
    model_file = out / train.MODEL_NAME
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


def _load_model(path: str) -> tuple[Sequential, dict[str, Any]]:
    return io.load(path), io.read_info(path)


def _loader_like_training(
    images: np.ndarray, labels: np.ndarray, info: dict[str, Any], model: Sequential
) -> DataLoader:
    """Batches normalised exactly as the model's training data was (recorded in its info)."""
    settings = info.get("normalize") or {}
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
    dataset = load_dataset(args.data or info.get("dataset", DEFAULT_DATA), data_dir=args.data_dir)
    loader = _loader_like_training(dataset.test_images, dataset.test_labels, info, model)
    result = train.evaluate(
        model, loader, zoo.make_loss(info.get("loss", "cross_entropy")), dataset.num_classes
    )
    print(
        f"{dataset.name} test set: accuracy {result['accuracy']:.4f}, "
        f"loss {result['loss']:.4f}, {result['count']} images"
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


def _read_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """An image file as uint8 (C, H, W) at the model's input size (as the training data)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    channels, height, width = shape
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        array = array.reshape(array.shape[-2:]) if array.ndim > 2 else array
        if array.shape != (height, width):
            raise UsageError(
                f"{path}: array of shape {array.shape}, model expects {height}x{width}"
            )
        if array.dtype.kind == "f" and array.max() <= 1.0:
            array = array * 255.0
        return np.clip(np.rint(array), 0, 255).astype(np.uint8).reshape(1, height, width)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UsageError("reading PNG/JPEG needs Pillow: pip install 'convnp[image]'") from None
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise UsageError(f"{path}: cannot read image ({error})") from None
    if image.mode != "L" and channels == 1:
        print(f"note: {path.name}: converted from {image.mode} to greyscale")
        image = image.convert("L")
    if image.size != (width, height):
        print(
            f"note: {path.name}: resized from {image.size[0]}x{image.size[1]} to {width}x{height}"
        )
        image = image.resize((width, height))
    return np.asarray(image, dtype=np.uint8).reshape(channels, height, width)


def cmd_predict(args: argparse.Namespace) -> int:
    model, info = _load_model(args.model_file)
    shape = tuple(info.get("input_shape", (1, 28, 28)))
    names = info.get("class_names") or [str(i) for i in range(10)]
    images = np.stack([_read_image(Path(p), shape) for p in args.images])
    labels = np.zeros(len(images), dtype=np.int64)
    ((x, _),) = _loader_like_training(images, labels, info, model)
    y = model.predict(x)
    kind = info.get("loss", "cross_entropy")
    scores, label = train.output_scores(kind, y)
    decisions = train.predicted_classes(zoo.make_loss(kind), y)
    for path, row, best in zip(args.images, scores, decisions):
        ranked = np.argsort(-row)[:3]
        print(f"{path}: {names[best]} ({label}: "
              + ", ".join(f"{names[i]}={row[i]:.3f}" for i in ranked) + ")")  # fmt: skip
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    if args.model_file:
        model, info = _load_model(args.model_file)
        shape = tuple(info.get("input_shape", (1, 28, 28)))
    else:
        model = zoo.get_recipe(args.model or DEFAULT_MODEL).build()
        shape = (1, 28, 28)
    print(model)
    model.summary(shape)
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
    model, info = _load_model(args.model_file)
    shape = tuple(args.input_shape or info.get("input_shape", (1, 28, 28)))
    kept = ("dataset", "class_names", "normalize", "loss")
    metadata = {key: info[key] for key in kept if key in info}
    mapping = info.get("loss", "cross_entropy") if args.probabilities else None
    try:
        onnx_export.to_onnx(model, args.out, shape, opset=args.opset, metadata=metadata,
                            normalize=info.get("normalize"), probabilities=mapping)  # fmt: skip
    except ImportError as error:
        raise UsageError(str(error)) from None
    output = train.output_scores(mapping, np.zeros((1, 1)))[1] if mapping else "network output"
    print(
        f"wrote {args.out}: ONNX opset {args.opset}, input '{onnx_export.INPUT_NAME}' "
        f"(batch, {', '.join(map(str, shape))}): "
        f"{onnx_export.input_scaling(info.get('normalize'))[2]}; "
        f"output '{onnx_export.OUTPUT_NAME}': {output}"
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        from convnp.app import plot
    except ImportError as error:
        raise UsageError(str(error)) from None
    data = load_dataset(args.data, data_dir=args.data_dir) if args.data else None
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


# -- argument parsing ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnp",
        description="Train and run convolutional networks on NumPy (hand-derived backprop).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (default: bouvrie on the bundled mnist5k)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--model", choices=list(zoo.RECIPES), help="built-in model (default bouvrie)"
    )
    group.add_argument("--arch", help="architecture string, e.g. 32c3p1-relu-2m-128f-relu")
    group.add_argument("--config", help="TOML file listing [[layers]]")
    p.add_argument(
        "--data", default=DEFAULT_DATA, choices=DATASETS, help="dataset (default mnist5k)"
    )
    p.add_argument("--data-dir", help="folder holding the dataset's IDX files")
    p.add_argument("--epochs", type=_positive_int, help="epochs (default: the model's recipe)")
    p.add_argument("--batch-size", type=_positive_int, help="batch size (default: recipe)")
    p.add_argument("--lr", type=_positive_float, help="learning rate (default: recipe)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default: recipe")
    p.add_argument("--momentum", type=float, help="SGD momentum (default: recipe)")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay (default: recipe)")
    p.add_argument(
        "--schedule",
        choices=["constant", "step", "exponential", "inv", "cosine"],
        help="learning-rate schedule (default: recipe)",
    )
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    p.add_argument("--seed", type=int, default=0, help="random seed (init and shuffling)")
    p.add_argument("--out", default="runs/latest", help="output folder (default runs/latest)")
    p.add_argument("--resume", help="checkpoint file or run folder to continue from")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--report", action="store_true", help="also write OUT/report.html")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, loss and confusion matrix of a saved model")
    p.add_argument("model_file", metavar="MODEL")
    p.add_argument("--data", choices=DATASETS, help="dataset (default: the one it trained on)")
    p.add_argument("--data-dir")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images (.png/.jpg need Pillow, or .npy)")
    p.add_argument("model_file", metavar="MODEL")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("summary", help="layers, output shapes and parameter counts")
    p.add_argument("model_file", nargs="?", metavar="MODEL")
    p.add_argument("--model", choices=list(zoo.RECIPES), help="a built-in model instead")
    p.set_defaults(handler=cmd_summary)

    p = sub.add_parser("gradcheck", help="finite-difference check of a model's layers")
    p.add_argument("--model", choices=list(zoo.RECIPES), default=DEFAULT_MODEL)
    p.add_argument("--samples", type=_positive_int, default=20, help="entries checked per array")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_gradcheck)

    p = sub.add_parser("export", help="write a saved model as an ONNX file (needs convnp[onnx])")
    p.add_argument("model_file", metavar="MODEL")
    p.add_argument("out", metavar="OUT.onnx")
    p.add_argument(
        "--input-shape",
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="one input without the batch axis, e.g. 1 28 28 (default: as trained)",
    )
    p.add_argument(
        "--opset", type=int, default=onnx_export.OPSET, help=f"ONNX opset (>= {onnx_export.OPSET})"
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="append the scores `convnp predict` prints (softmax, or softmax of -RBF energies)",
    )
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("plot", help="PNG figures of a run: curves, kernels, maps, confusion")
    p.add_argument("run", metavar="RUN", help="run folder (or model file) from convnp train")
    p.add_argument("out", metavar="OUT_DIR", nargs="?", default="figures")
    p.add_argument("--image", type=int, default=0, help="test image for the feature maps")
    p.add_argument("--data", choices=DATASETS, help="test data (default: as trained)")
    p.add_argument("--data-dir")
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    keep_freed_memory()  # reuse each step's large temporaries instead of page-faulting anew
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":
        args.passthrough = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (UsageError, ValueError, FileNotFoundError) as error:
        print(f"convnp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convnp: interrupted; checkpoints written so far are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
