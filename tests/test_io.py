"""Model files: bit-exact round trip, safetensors compatibility, clear errors, atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.numpy

from convnp import Sequential, io
from convnp.layers import Conv2d, Flatten, Linear, ReLU, ScaledTanh


def _model(rng, dtype=np.float32):
    table = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    return Sequential(
        Conv2d(
            2, 3, 3, padding="same", connection_table=table, flip_kernel=True, dtype=dtype, rng=rng
        ),
        ScaledTanh(),
        Flatten(),
        Linear(3 * 5 * 5, 4, dtype=dtype, rng=rng),
        ReLU(),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact(dtype, rng, tmp_path):
    model = _model(rng, dtype)
    path = tmp_path / "m.safetensors"
    io.save(model, path, info={"class_names": ["a", "b", "c", "d"]})
    loaded = io.load(path)
    assert repr(loaded) == repr(model)
    assert loaded.dtype == dtype
    for (name, ours, _), (other_name, theirs, _) in zip(model.parameters(), loaded.parameters()):
        assert name == other_name
        assert theirs.dtype == ours.dtype
        np.testing.assert_array_equal(theirs, ours)
    x = rng.standard_normal((2, 2, 5, 5)).astype(dtype)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert io.read_info(path) == {"class_names": ["a", "b", "c", "d"]}


def test_file_is_plain_safetensors_with_torch_style_names(rng, tmp_path):
    path = tmp_path / "m.safetensors"
    model = _model(rng)
    io.save(model, path)
    tensors = safetensors.numpy.load_file(path)
    assert set(tensors) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    np.testing.assert_array_equal(tensors["3.weight"], model[3].params["weight"])


def test_truncated_and_garbage_files_are_rejected_with_the_path(rng, tmp_path):
    path = tmp_path / "m.safetensors"
    io.save(_model(rng), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match="truncated.safetensors: not a valid safetensors file"):
        io.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x07" * 100)
    with pytest.raises(ValueError, match="garbage.safetensors"):
        io.load(garbage)
    with pytest.raises(FileNotFoundError, match="no such file"):
        io.load(tmp_path / "missing.safetensors")


def _rewrite(path, tensors=None, **metadata_changes):
    loaded, metadata = io.load_tensors(path)
    metadata.update(metadata_changes)
    io.save_tensors(path, tensors if tensors is not None else loaded, metadata)


def test_shape_mismatch_names_the_tensor_and_shapes(rng, tmp_path):
    path = tmp_path / "m.safetensors"
    io.save(_model(rng), path)
    tensors, _ = io.load_tensors(path)
    tensors["3.weight"] = np.zeros((4, 7), np.float32)
    _rewrite(path, tensors)
    with pytest.raises(ValueError, match=r"'3.weight' has shape \(4, 7\), model expects \(4, 75\)"):
        io.load(path)


def test_untrusted_architecture_cannot_name_arbitrary_classes(rng, tmp_path):
    path = tmp_path / "m.safetensors"
    io.save(_model(rng), path)
    evil = [{"type": "os.system", "config": {"command": "echo hacked"}}]
    _rewrite(path, architecture=json.dumps(evil))
    with pytest.raises(ValueError, match="unknown layer type 'os.system'"):
        io.load(path)
    _rewrite(
        path,
        architecture=json.dumps([{"type": "Linear", "config": {"in_features": 2, "bogus": 1}}]),
    )
    with pytest.raises(ValueError, match=r"entry 0 \(Linear\).*bogus"):
        io.load(path)
    _rewrite(path, architecture="{not json")
    with pytest.raises(ValueError, match="corrupt model metadata"):
        io.load(path)
    _rewrite(path, format="something-else")
    with pytest.raises(ValueError, match="not a convnp model file"):
        io.load(path)


def test_failed_write_leaves_the_old_file_and_no_temporary(rng, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    io.save(_model(rng), path)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        io.save(_model(np.random.default_rng(5)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_gelu_written_before_approximate_existed_loads_as_the_tanh_form():
    from convnp.io import build

    (old,) = build([{"type": "GELU", "config": {}}])
    assert old.approximate == "tanh"
    (new,) = build([{"type": "GELU", "config": {"approximate": "none"}}])
    assert new.approximate == "none"
