"""Fuzzing the model-file and checkpoint loaders: mutated JSON metadata, tensors and bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fuzzing import (
    EDGE_INTS,
    HOSTILE_SCALARS,
    examples,
    fuzz,
    hostile_json_text,
    mutate_bytes,
    outcome,
    run_in_child,
    scratch_folder,
)
from hypothesis import strategies as st

from convnp import Sequential, io
from convnp import layers as L
from convnp.optim import SGD, Adam


def _model() -> Sequential:
    rng = np.random.default_rng(0)
    return Sequential(
        L.Conv2d(1, 2, 3, padding=1, rng=rng),
        L.BatchNorm2d(2),
        L.ReLU(),
        L.MaxPool2d(2),
        L.LocallyConnected2d(2, 2, (3, 3), 2, rng=rng),
        L.Flatten(),
        L.Dropout(0.2, rng=rng),
        L.Linear(8, 4, rng=rng),
    )


INFO = {"input_shape": [1, 6, 6], "class_names": list("abcd"), "normalize": {"kind": "unit"}}
TENSOR = st.one_of(
    st.builds(
        lambda shape, dtype, fill: np.full(shape, fill, dtype=dtype),
        st.lists(st.integers(0, 5), max_size=4).map(tuple),
        st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_]),
        st.sampled_from([0, 1, np.nan, np.inf]),
    ),
)


def _mutated_file(data: st.DataObject, template: Path, target: Path) -> None:
    """Write ``target``: the template with one field, tensor or byte range made hostile."""
    tensors, metadata = io.load_tensors(template)
    kind = data.draw(st.sampled_from(["field", "field", "config", "config", "tensor", "bytes"]))
    if kind == "config":  # one argument of one layer: the rest stays valid, so checks run deep
        spec = json.loads(metadata["architecture"])
        entry = data.draw(st.sampled_from([e for e in spec if e.get("config")]))
        key = data.draw(st.sampled_from(sorted(entry["config"])))
        entry["config"][key] = data.draw(EDGE_INTS | HOSTILE_SCALARS)
        metadata["architecture"] = json.dumps(spec)
    elif kind == "field":
        field = data.draw(st.sampled_from(sorted(metadata)))
        try:
            document = json.loads(metadata[field])
        except ValueError:  # a plain string field: format, dtype, version
            document = metadata[field]
        if data.draw(st.integers(0, 9)) == 0:
            del metadata[field]
        else:
            metadata[field] = hostile_json_text(document, data)
    elif kind == "tensor":
        name = data.draw(st.sampled_from(sorted(tensors)))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del tensors[name]
        else:
            key = name if action == "replace" else data.draw(st.text(min_size=1, max_size=9))
            tensors[key] = data.draw(TENSOR)
    io.save_tensors(target, tensors, metadata)
    if kind == "bytes":
        target.write_bytes(mutate_bytes(template.read_bytes(), data))


def fuzz_model_files(count: int) -> dict:
    folder = scratch_folder()
    template, path = folder / "template.safetensors", folder / "fuzzed.safetensors"
    io.save(_model(), template, INFO)

    def check(data: st.DataObject) -> str:
        _mutated_file(data, template, path)
        read = outcome(lambda: io.read_info(path), str(path))
        loaded = outcome(lambda: io.load(path), str(path))
        return "accepted" if read == loaded == "accepted" else "refused"

    return fuzz(count, st.data(), check)


def fuzz_checkpoints(count: int) -> dict:
    folder = scratch_folder()
    templates = []
    for optimizer in (SGD, Adam):
        model = _model()
        options = {"momentum": 0.9} if optimizer is SGD else {}
        template = folder / f"{optimizer.__name__}.safetensors"
        history = [{"epoch": 1, "train_loss": 0.5}]
        io.save_checkpoint(template, model, optimizer(model.parameters(), 0.1, **options),
                           history, INFO)  # fmt: skip
        templates.append(template)
    path = folder / "fuzzed.safetensors"

    def check(data: st.DataObject) -> str:
        _mutated_file(data, data.draw(st.sampled_from(templates)), path)
        return outcome(lambda: io.resume(path), str(path))

    return fuzz(count, st.data(), check)


def test_fuzz_model_file_loader():
    counts = run_in_child("test_fuzz_io", "fuzz_model_files", examples(200))
    assert counts["inputs"] >= examples(200) // 2 and counts.get("refused", 0) > 0


def test_fuzz_checkpoint_loader():
    counts = run_in_child("test_fuzz_io", "fuzz_checkpoints", examples(200))
    assert counts["inputs"] >= examples(200) // 2 and counts.get("refused", 0) > 0
