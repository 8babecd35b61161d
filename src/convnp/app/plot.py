"""Pictures of a training run and of what the network learned, written as PNG files.

Needs matplotlib (``pip install 'convnp[plot]'``); nothing else in convnp imports this
module. Figures are drawn with matplotlib's object interface on its Agg canvas: no pyplot,
so the caller's pyplot backend and state are never touched and no window ever opens.

* ``plot_history``: loss and accuracy per epoch, train and validation (``train.fit``'s
  history, also ``<run>/history.json``), and the test set's, measured once after training.
* ``plot_kernels``: a convolution layer's kernels as a grid of small images.
* ``plot_feature_maps``: one input image and the maps of every conv/pool layer.
* ``plot_alpha``: α of a ``FeatureMapCombination`` (SPEC §4) as a heat map.
* ``plot_confusion``: a confusion matrix with class names.
* ``plot_misclassified``: a grid of images captioned with true and predicted class.
* ``plot_run``: all of the applicable figures for a trained run folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convnp import runs, train
from convnp.app import zoo
from convnp.data import DataLoader, Dataset, channel_stats, load_dataset
from convnp.layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    Conv2d,
    FeatureMapCombination,
    Layer,
    LPPool2d,
    MaxPool2d,
    Subsample2d,
    WeightedAvgPool2d,
)
from convnp.model import Sequential

#: Layers whose outputs ``plot_feature_maps`` shows (activations are drawn into the next one).
FEATURE_LAYERS: tuple[type[Layer], ...] = (
    Conv2d,
    FeatureMapCombination,
    Subsample2d,
    MaxPool2d,
    AvgPool2d,
    LPPool2d,
    WeightedAvgPool2d,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
)
DPI = 100


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas; clear advice if matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("convnp.app.plot needs matplotlib: pip install 'convnp[plot]'") from None
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _grid_shape(count: int, max_columns: int) -> tuple[int, int]:
    columns = min(count, max_columns, max(1, math.ceil(math.sqrt(count))))
    return math.ceil(count / columns), columns


# -- learning curves ------------------------------------------------------------------------
def plot_history(
    history: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "",
    val_label: str = "validation",
    test: Mapping[str, float] | None = None,
) -> Path:
    """Loss (left) and accuracy (right) per epoch, train and validation where recorded.

    ``test`` ({"loss": ..., "accuracy": ...}), the test set evaluated once after training,
    is drawn as a single marker at the last epoch. ``val_label`` names the "val" curve
    (runs from before the validation split recorded the test set there).
    """
    if not history:
        raise ValueError("plot_history: the history is empty")
    epochs = [record["epoch"] for record in history]
    figure = _figure(9, 3.6)
    for position, (quantity, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
        axes = figure.add_subplot(1, 2, position + 1)
        for split, style in (("train", "o-"), ("val", "s--")):
            key = f"{split}_{quantity}"
            if all(key in record for record in history):
                values = [record[key] for record in history]
                axes.plot(epochs, values, style, label=val_label if split == "val" else split)
        if test is not None and test.get(quantity) is not None:
            axes.plot(epochs[-1:], [test[quantity]], "k*", markersize=10, label="test (once)")
        axes.set_xlabel("epoch")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    return _save(figure, path)


# -- kernels ------------------------------------------------------------------------------
def plot_kernels(layer_or_weight: Layer | np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """Every 2-D kernel of a conv layer, on one colour scale (red > 0 > blue).

    Weights (O, C, kH, kW): one row per output map and one column per input map; with a
    single input map the O kernels are wrapped into a near-square grid instead.
    """
    weight = (
        layer_or_weight.params["weight"] if isinstance(layer_or_weight, Layer) else layer_or_weight
    )
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 4:
        raise ValueError(f"plot_kernels: expected weights (O, C, kH, kW), got {weight.shape}")
    out_maps, in_maps = weight.shape[:2]
    if in_maps == 1:
        rows, columns = _grid_shape(out_maps, 8)
        kernels = [weight[o, 0] for o in range(out_maps)]
    else:
        rows, columns = out_maps, in_maps
        kernels = [weight[o, i] for o in range(out_maps) for i in range(in_maps)]
    limit = float(np.abs(weight).max()) or 1.0
    figure = _figure(max(4.0, 1.0 + 0.9 * columns), 0.8 + 0.9 * rows)
    image = None
    for index, kernel in enumerate(kernels):
        axes = figure.add_subplot(rows, columns, index + 1)
        image = axes.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.colorbar(image, ax=figure.axes, shrink=0.8)
    shape = "x".join(str(size) for size in weight.shape)
    figure.suptitle(f"{title}\nkernels {shape}" if title else f"kernels {shape}", fontsize=9)
    return _save(figure, path)


# -- feature maps -------------------------------------------------------------------------
def plot_feature_maps(
    model: Sequential,
    image: np.ndarray,
    path: str | Path,
    *,
    max_maps: int = 16,
    title: str = "",
) -> Path:
    """The input image, then the output maps of each conv/pool layer (``FEATURE_LAYERS``).

    ``image`` is one network input (C, H, W), normalised as in training. Maps of size 1x1
    (e.g. LeNet-5's C5) are left out; at most ``max_maps`` maps are shown per layer.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"plot_feature_maps: expected one image (C, H, W), got {image.shape}")
    x = image[None].astype(model.dtype or np.float32)
    rows: list[tuple[str, np.ndarray]] = [("input", x[0])]
    was_training = model.training
    model.eval()
    try:
        for index, layer in enumerate(model):
            x = layer.forward(x)
            if isinstance(layer, FEATURE_LAYERS) and x.ndim == 4 and x.shape[2] * x.shape[3] > 1:
                rows.append((f"{index}: {type(layer).__name__}", x[0, :max_maps]))
    finally:
        model.train(was_training)
    columns = max(len(maps) for _, maps in rows)
    width = 1.4 + 0.75 * columns  # about 1.4 inches on the left for the row labels
    figure = _figure(width, 0.5 + 0.85 * len(rows))
    for row, (label, maps) in enumerate(rows):
        for column, feature_map in enumerate(maps):
            axes = figure.add_subplot(len(rows), columns, row * columns + column + 1)
            axes.imshow(feature_map, cmap="gray" if row == 0 else "viridis")
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


# -- learned combinations of feature maps --------------------------------------------------
def plot_alpha(
    alpha: FeatureMapCombination | np.ndarray | Mapping[str, np.ndarray],
    path: str | Path,
    *,
    title: str = "",
    max_columns: int = 3,
) -> Path:
    """α as a heat map, input maps i down and output maps j across (SPEC §4's α_ij).

    ``alpha`` is a ``FeatureMapCombination``, its ``.alpha`` (out_channels, in_channels),
    or ``{panel title: alpha}`` for several on one colour scale [0, 1], ``max_columns``
    panels to a row.
    """
    if isinstance(alpha, FeatureMapCombination):
        alpha = alpha.alpha
    panels = dict(alpha) if isinstance(alpha, Mapping) else {"": alpha}
    columns = min(len(panels), max_columns)
    rows = math.ceil(len(panels) / columns)
    first = np.asarray(next(iter(panels.values())))
    figure = _figure(
        0.8 + columns * (1.2 + 0.28 * first.shape[0]), 0.8 + rows * (0.9 + 0.3 * first.shape[1])
    )
    image = None
    for index, (label, matrix) in enumerate(panels.items()):
        matrix = np.asarray(matrix, dtype=np.float64)
        axes = figure.add_subplot(rows, columns, index + 1)
        image = axes.imshow(matrix.T, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
        axes.set_xlabel("output map j")
        axes.set_ylabel("input map i")
        axes.set_xticks(range(0, matrix.shape[0], math.ceil(matrix.shape[0] / 16)))
        axes.set_yticks(range(0, matrix.shape[1], math.ceil(matrix.shape[1] / 16)))
        axes.set_title(label, fontsize=9)
    figure.colorbar(image, ax=figure.axes, shrink=0.8, label="α_ij")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


# -- confusion matrix -----------------------------------------------------------------------
def plot_confusion(
    confusion: np.ndarray, class_names: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """Counts with true classes down and predicted classes across, each cell labelled."""
    confusion = np.asarray(confusion)
    classes = len(class_names)
    if confusion.shape != (classes, classes):
        raise ValueError(
            f"plot_confusion: {classes} class names but a confusion matrix of {confusion.shape}"
        )
    figure = _figure(2.0 + 0.55 * classes, 1.6 + 0.5 * classes)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(confusion, cmap="Blues")
    threshold = confusion.max() / 2 if confusion.size else 0
    for (true, predicted), count in np.ndenumerate(confusion):
        colour = "white" if count > threshold else "black"
        axes.text(predicted, true, str(count), ha="center", va="center", fontsize=7, color=colour)
    axes.set_xticks(range(classes), [str(name) for name in class_names], rotation=45, ha="right")
    axes.set_yticks(range(classes), [str(name) for name in class_names])
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    axes.set_title(title or f"accuracy {accuracy:.4f} on {confusion.sum()} images")
    return _save(figure, path)


# -- the most confidently misclassified images ------------------------------------------------
def plot_misclassified(
    images: np.ndarray,
    true: Sequence[int],
    predicted: Sequence[int],
    confidence: Sequence[float],
    class_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    max_columns: int = 6,
) -> Path:
    """Images (N, C, H, W) in raw pixels, each captioned "true → predicted (confidence)"."""
    images = np.asarray(images)
    if images.ndim != 4 or not len(images):
        raise ValueError(f"plot_misclassified: expected images (N, C, H, W), got {images.shape}")
    rows, columns = _grid_shape(len(images), max_columns)
    figure = _figure(0.6 + 1.5 * columns, 0.6 + 1.7 * rows)
    for index, image in enumerate(images):
        axes = figure.add_subplot(rows, columns, index + 1)
        shown = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
        axes.imshow(shown, cmap="gray")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(
            f"{class_names[true[index]]} →\n{class_names[predicted[index]]} "
            f"({confidence[index]:.2f})",
            fontsize=7,
        )
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def loader_like_training(
    data: Dataset, settings: Mapping[str, Any], dtype: Any, chosen: slice = slice(None)
) -> DataLoader:
    """Test images ``chosen`` in order, normalised as the run's training data was (its info's
    ``normalize``: kind, and mean/std, recomputed from the training images if missing)."""
    options: dict[str, Any] = dict(
        shuffle=False,
        normalize=settings.get("kind", "unit"),
        mean=settings.get("mean"),
        std=settings.get("std"),
        dtype=dtype or np.float32,
    )
    if options["normalize"] == "standardize" and options["mean"] is None:
        options["mean"], options["std"] = channel_stats(data.train_images)
    return DataLoader(data.test_images[chosen], data.test_labels[chosen], 1000, **options)


# -- everything for a run -------------------------------------------------------------------
def plot_run(
    run_dir_or_model_path: str | Path,
    out_dir: str | Path,
    *,
    image_index: int = 0,
    data: Dataset | None = None,
) -> list[Path]:
    """Write every applicable figure for a trained run; returns the files written.

    ``run_dir_or_model_path`` is a run folder (``model.safetensors``, or the checkpoint of an
    unfinished run, and ``history.json`` if present, as ``convnp train`` writes them), a
    model file or a checkpoint (``convnp.runs.load_model``). Figures:
    ``learning_curves.png`` (if there is a history), ``kernels.png`` (first conv layer),
    ``alpha_<layer index>.png`` (each FeatureMapCombination), and, with test data,
    ``feature_maps.png`` (test image ``image_index``) and ``confusion.png`` (whole test
    set). ``data`` defaults to the data set named in the model's info, if it names one.
    """
    model, info, model_path = runs.load_model(run_dir_or_model_path)
    out = Path(out_dir)
    name = f"{info.model} on {info.dataset or '?'}"
    written = []
    history_path = model_path.parent / "history.json"
    if history_path.is_file():
        history = json.loads(history_path.read_text())
        test = {"loss": info.test_loss, "accuracy": info.test_accuracy}
        val_label = "test (per epoch, older run)" if info.val_was_test else "validation"
        written.append(
            plot_history(
                history, out / "learning_curves.png", title=name, val_label=val_label, test=test
            )  # fmt: skip
        )
    for index, layer in enumerate(model):
        if isinstance(layer, (Conv2d, FeatureMapCombination)):
            caption = f"{name}, layer {index}: {type(layer).__name__}"
            written.append(plot_kernels(layer, out / "kernels.png", title=caption))
            break
    for index, layer in enumerate(model):
        if isinstance(layer, FeatureMapCombination):
            written.append(
                plot_alpha(layer, out / f"alpha_{index}.png", title=f"α of layer {index}")
            )
    if data is None and info.dataset:
        data = load_dataset(info.dataset)
    if data is None:
        return written
    if not 0 <= image_index < len(data.test_labels):
        raise ValueError(
            f"plot_run: image_index {image_index} outside the {len(data.test_labels)} test images"
        )
    settings = info.normalize
    loader_options = dict(
        shuffle=False,
        normalize=settings.get("kind", "unit"),
        mean=settings.get("mean"),
        std=settings.get("std"),
        dtype=model.dtype or np.float32,
    )
    if loader_options["normalize"] == "standardize" and loader_options["mean"] is None:
        loader_options["mean"], loader_options["std"] = channel_stats(data.train_images)
    chosen = slice(image_index, image_index + 1)
    image, label = next(iter(loader_like_training(data, settings, model.dtype, chosen)))
    caption = f"{name}: test image {image_index} ({data.class_names[int(label[0])]})"
    written.append(plot_feature_maps(model, image[0], out / "feature_maps.png", title=caption))
    test = loader_like_training(data, settings, model.dtype)
    # the class decision follows the loss the model was trained with (argmin for RBF energies)
    loss = zoo.make_loss(info.loss)
    result = train.evaluate(model, test, loss, len(data.class_names))
    caption = f"{name}: test accuracy {result['accuracy']:.4f} ({result['count']} images)"
    written.append(
        plot_confusion(result["confusion"], data.class_names, out / "confusion.png", title=caption)
    )
    return written
