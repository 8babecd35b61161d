"""One self-contained HTML page about a trained run: ``convnp report RUN [OUT.html]``.

The page holds what a reader needs to judge the run without the files: the command and
hyper-parameters, the model (layers, output shapes, parameter counts), the data set and
its splits, the per-epoch history as a table and as learning curves, the confusion matrix
with class names, the first layer's kernels, the feature maps of one test image, the α
heat maps of every ``FeatureMapCombination``, the test images misclassified with the most
confidence, timing and versions.

Self-contained: every figure is a PNG from ``convnp.app.plot`` embedded as a ``data:`` URI
and the style sheet is inline, so the page opens offline, can be mailed as one file, and
references nothing remote. Needs matplotlib (``pip install 'convnp[plot]'``).

The run's recorded info is read through ``_field``, which accepts the mapping that
``convnp train`` stores today as well as an object with attributes (a typed run record).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import platform
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import convnp
from convnp import io, train
from convnp.app import plot, zoo
from convnp.data import Dataset, load_dataset
from convnp.layers import Conv2d, FeatureMapCombination
from convnp.model import Sequential

_NUMERIC = re.compile(r"[-+]?[0-9][0-9.,e+-]*")
#: How many of the most confidently misclassified test images the page shows.
MISCLASSIFIED_SHOWN = 18

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { border-bottom: 2px solid #2b6cb0; padding-bottom: .2em; }
h2 { margin-top: 1.8em; color: #2b6cb0; }
table { border-collapse: collapse; margin: .5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccd; padding: .25em .6em; text-align: right; }
th { background: #eef2f8; }
td.text, th.text { text-align: left; }
pre, code { background: #f5f6f8; font-size: 0.88em; }
pre { padding: .6em; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #e2e4e8; }
.note { color: #555; font-size: 0.9em; }
"""


def _field(record: Any, key: str, default: Any = None) -> Any:
    """``record[key]`` for a mapping, ``record.key`` for an object; ``default`` if absent."""
    if record is None:
        return default
    if isinstance(record, Mapping):
        return record.get(key, default)
    return getattr(record, key, default)


def _as_mapping(record: Any) -> dict[str, Any]:
    """A plain dict view of the info (a mapping, a dataclass, or an object's attributes)."""
    if record is None:
        return {}
    if isinstance(record, Mapping):
        return dict(record)
    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)
    return {key: value for key, value in vars(record).items() if not key.startswith("_")}


def _png_uri(draw: Callable[[Path], Path]) -> str:
    """Run a ``convnp.app.plot`` function on a temporary file; return it as a data: URI."""
    with tempfile.TemporaryDirectory() as folder:
        path = draw(Path(folder) / "figure.png")
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def _image(uri: str, alt: str) -> str:
    return f'<p><img src="{uri}" alt="{html.escape(alt)}"></p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table: numbers right-aligned, text left-aligned."""

    def cells(values: Sequence[Any], tag: str) -> str:
        return "".join(
            f"<{tag}{'' if _NUMERIC.fullmatch(str(v)) else ' class=text'}>"
            f"{html.escape(str(v))}</{tag}>"
            for v in values
        )

    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    return f"<table><tr>{cells(header, 'th')}</tr>{body}</table>"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


# -- the sections -------------------------------------------------------------------------
def _command_section(info: Any) -> str:
    recorded = _field(info, "command")
    options = [f"--model {_field(info, 'model', '?')}", f"--data {_field(info, 'dataset', '?')}"]
    for key, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size"),
                      ("schedule", "--schedule"), ("seed", "--seed")):  # fmt: skip
        if _field(info, key) is not None:
            options.append(f"{flag} {_field(info, key)}")
    if isinstance(recorded, list | tuple):  # an argv list, as a typed run record keeps it
        recorded = shlex.join(str(part) for part in recorded)
    command = recorded or "convnp train " + " ".join(options)
    caption = "as recorded" if recorded else "an equivalent command, rebuilt from the recorded run"
    skipped = {"class_names", "command"}
    rows = [
        (key, json.dumps(value) if isinstance(value, dict | list) else value)
        for key, value in _as_mapping(info).items()
        if key not in skipped
    ]
    return (
        f"<h2>Command and hyper-parameters</h2><pre>{html.escape(command)}</pre>"
        f'<p class="note">{caption}</p>' + _table(("setting", "value"), rows)
    )


def _model_section(model: Sequential, input_shape: tuple[int, ...]) -> str:
    shapes = model.output_shapes(input_shape)
    rows = [("", "input", str(input_shape), "")]
    rows += [
        (index, repr(layer), str(shape), f"{layer.num_parameters():,}")
        for index, (layer, shape) in enumerate(zip(model, shapes))
    ]
    rows.append(("", "total", "", f"{model.num_parameters():,}"))
    table = _table(("#", "layer", "output shape", "parameters"), rows)
    return f"<h2>Model</h2>{table}<p class=note>dtype {model.dtype}</p>"


def _data_section(data: Dataset | None, info: Any) -> str:
    if data is None:
        return "<h2>Data</h2><p>No data set is recorded for this run.</p>"
    rows = [
        ("training", _field(info, "train_size") or len(data.train_labels), "the weights"),
        ("test", len(data.test_labels), "the test accuracy, confusion matrix and figures below"),
    ]
    for key in ("val_split", "validation_split", "val_size"):  # named as the run records it
        if _field(info, key) is not None:
            rows.append(("validation", _field(info, key), f"the val_* columns ({key})"))
    shape = "×".join(map(str, data.train_images.shape[1:]))
    normalize = _field(info, "normalize") or {}
    return (
        f"<h2>Data</h2><p>{html.escape(data.name)}: {len(data.class_names)} classes "
        f"({html.escape(', '.join(map(str, data.class_names)))}), images {shape}, "
        f"normalisation {html.escape(str(_field(normalize, 'kind')))}.</p>"
        + _table(("split", "images", "used for"), rows)
    )


def _history_section(history: list[dict[str, Any]], title: str) -> str:
    if not history:
        return "<h2>Training history</h2><p>No history.json in the run folder.</p>"
    columns = list(dict.fromkeys(key for record in history for key in record))
    rows = [[_number(record.get(key, "")) for key in columns] for record in history]
    curves = _png_uri(lambda path: plot.plot_history(history, path, title=title))
    return (
        "<h2>Training history</h2>"
        + _table(columns, rows)
        + "<h3>Learning curves</h3>"
        + _image(curves, "loss and accuracy per epoch")
    )


def _weights_section(model: Sequential, name: str) -> str:
    parts = []
    for index, layer in enumerate(model):
        if isinstance(layer, Conv2d | FeatureMapCombination):
            caption = f"{name}, layer {index}: {type(layer).__name__}"
            uri = _png_uri(lambda path, k=layer, c=caption: plot.plot_kernels(k, path, title=c))
            parts.append(f"<h2>First-layer kernels</h2>{_image(uri, caption)}")
            break
    for index, layer in enumerate(model):
        if isinstance(layer, FeatureMapCombination):
            title = f"α of layer {index} (input map i × output map j)"
            uri = _png_uri(lambda path, a=layer, t=title: plot.plot_alpha(a, path, title=t))
            parts.append(f"<h2>Learned combinations, layer {index}</h2>{_image(uri, title)}")
    return "".join(parts)


def _test_set_sections(
    model: Sequential, data: Dataset, info: Any, name: str, image_index: int
) -> tuple[str, dict[str, Any]]:
    """Confusion matrix, feature maps and misclassified images; returns the HTML and the
    evaluation result."""
    settings = _as_mapping(_field(info, "normalize"))
    loss_kind = _field(info, "loss", "cross_entropy")
    loader = plot.loader_like_training(data, settings, model.dtype)
    outputs = np.concatenate([model.predict(x) for x, _ in loader])
    loss = zoo.make_loss(loss_kind)
    result = train.evaluate(model, loader, loss, len(data.class_names))
    predicted = train.predicted_classes(loss, outputs)
    scores, score_name = train.output_scores(loss_kind, outputs)
    names = [str(n) for n in data.class_names]
    caption = f"{name}: test accuracy {result['accuracy']:.4f} ({result['count']} images)"
    confusion = _png_uri(
        lambda path: plot.plot_confusion(result["confusion"], names, path, title=caption)
    )
    chosen = slice(image_index, image_index + 1)
    image, label = next(iter(plot.loader_like_training(data, settings, model.dtype, chosen)))
    maps_title = f"test image {image_index} ({names[int(label[0])]})"
    maps = _png_uri(lambda path: plot.plot_feature_maps(model, image[0], path, title=maps_title))
    html_parts = [
        f"<h2>Test set</h2><p>accuracy <b>{result['accuracy']:.4f}</b>, loss "
        f"{result['loss']:.4f}, {result['count']} images.</p>",
        "<h3>Confusion matrix</h3>" + _image(confusion, caption),
        f"<h2>Feature maps of {html.escape(maps_title)}</h2>" + _image(maps, maps_title),
    ]
    wrong = np.flatnonzero(predicted != data.test_labels)
    if len(wrong):
        confidence = scores[wrong, predicted[wrong]]
        worst = wrong[np.argsort(-confidence, kind="stable")[:MISCLASSIFIED_SHOWN]]
        grid = _png_uri(
            lambda path: plot.plot_misclassified(
                data.test_images[worst], data.test_labels[worst], predicted[worst],
                scores[worst, predicted[worst]], names, path,
                title=f"true → predicted ({score_name} of the predicted class)",
            )
        )  # fmt: skip
        html_parts.append(
            f"<h2>Most confidently misclassified</h2><p>{len(wrong)} of {len(predicted)} test "
            f"images are misclassified; the {len(worst)} below have the highest {score_name} "
            "for the wrong class.</p>" + _image(grid, "misclassified test images")
        )
    return "".join(html_parts), result


def _timing_section(history: list[dict[str, Any]], seconds_to_report: float) -> str:
    rows = []
    if history:
        train_seconds = sum(record.get("seconds", 0.0) for record in history)
        speeds = [record.get("images_per_second", np.nan) for record in history]
        rows.append(("training (all epochs)", f"{train_seconds:.1f} s"))
        rows.append(("per epoch (mean)", f"{train_seconds / len(history):.1f} s"))
        if not np.isnan(speeds).any():
            rows.append(("training throughput (mean)", f"{np.mean(speeds):,.0f} images/s"))
    rows.append(("this report (evaluation and figures)", f"{seconds_to_report:.1f} s"))
    return "<h2>Timing</h2>" + _table(("what", "time"), rows)


def _versions_section(model_path: Path) -> str:
    _, metadata = io.load_tensors(model_path, metadata_only=True)
    import matplotlib

    rows = [
        ("convnp that wrote the model", metadata.get("convnp_version", "?")),
        ("convnp (this report)", convnp.__version__),
        ("NumPy", np.__version__),
        ("matplotlib", matplotlib.__version__),
        ("Python", platform.python_version()),
        ("platform", platform.platform()),
    ]
    return "<h2>Versions</h2>" + _table(("software", "version"), rows)


# -- the page -----------------------------------------------------------------------------
def build_report(
    run_dir_or_model_path: str | Path,
    *,
    data: Dataset | None = None,
    data_dir: str | None = None,
    image_index: int = 0,
) -> str:
    """The HTML page for a run folder (``model.safetensors``, ``history.json``) or a model
    file. ``data`` defaults to the data set named in the run's info (loaded from
    ``data_dir`` or the usual places); without one the test-set sections are left out."""
    started = time.perf_counter()
    source = Path(run_dir_or_model_path)
    model_path = source / io.MODEL_NAME if source.is_dir() else source
    model = io.load(model_path)
    info = io.read_info(model_path)
    history_path = model_path.parent / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    dataset_name = _field(info, "dataset")
    if data is None and dataset_name:
        data = load_dataset(dataset_name, data_dir=data_dir)
    name = f"{_field(info, 'model', model_path.stem)} on {dataset_name or '?'}"
    input_shape = tuple(_field(info, "input_shape") or (1, 28, 28))
    if data is not None and not 0 <= image_index < len(data.test_labels):
        raise ValueError(
            f"report: image {image_index} outside the {len(data.test_labels)} test images"
        )
    sections = [
        _command_section(info),
        _model_section(model, input_shape),
        _data_section(data, info),
        _history_section(history, name),
    ]
    summary = ""
    if data is not None:
        test_html, result = _test_set_sections(model, data, info, name, image_index)
        summary = f" — test accuracy {result['accuracy']:.4f}"
        sections.append(test_html)
    sections.append(_weights_section(model, name))
    sections.append(_timing_section(history, time.perf_counter() - started))
    sections.append(_versions_section(model_path))
    title = html.escape(f"convnp run: {name}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{title}{html.escape(summary)}</h1>"
        f'<p class="note">{html.escape(str(model_path))}; written '
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>" + "".join(sections) + "</body></html>\n"
    )


def write_report(
    run_dir_or_model_path: str | Path,
    out: str | Path,
    *,
    data: Dataset | None = None,
    data_dir: str | None = None,
    image_index: int = 0,
) -> Path:
    """Write ``build_report``'s page to ``out`` atomically; returns the path."""
    page = build_report(
        run_dir_or_model_path, data=data, data_dir=data_dir, image_index=image_index
    )
    out = Path(out)
    io.write_atomic(out, page.encode("utf-8"))
    return out
