"""Model files: bit-exact round trip, safetensors compatibility, clear errors, atomic writes."""

from __future__ import annotations

import inspect
import json
import os

import numpy as np
import pytest
import safetensors.numpy

from convnp import Sequential, io
from convnp import layers as L
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


# -- hostile model files (issue 12): each a clear error naming the file and the field ------
def _craft(path, architecture, tensors=None, **metadata):
    """A model file with exactly the given (possibly hostile) metadata and tensors."""
    fields = {"format": "convnp", "format_version": "1", "dtype": "float32", "info": "{}"}
    fields["architecture"] = (
        architecture if isinstance(architecture, str) else json.dumps(architecture)
    )
    fields.update(metadata)
    io.save_tensors(path, tensors or {}, fields)
    return path


def _linear(in_features=2, out_features=3, **extra):
    return [
        {
            "type": "Linear",
            "config": {"in_features": in_features, "out_features": out_features, **extra},
        }
    ]


def _conv(**config):
    base = {"in_channels": 1, "out_channels": 3, "kernel_size": 3}
    return [{"type": "Conv2d", "config": {**base, **config}}]


def _linear_tensors(in_features=2, out_features=3):
    return {
        "0.weight": np.zeros((out_features, in_features), np.float32),
        "0.bias": np.zeros(out_features, np.float32),
    }


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ([{"type": ["Linear"], "config": {}}], r"entry 0: unknown layer type \['Linear'\]"),
        ([{"type": None}], "entry 0: unknown layer type None"),
        ([["Linear", {}]], "entry 0 is not"),
        ({"type": "Linear"}, "must be a list of layers"),
        (
            '[{"type": "Linear", "config": {"in_features": Infinity, "out_features": 3}}]',
            r"entry 0 \(Linear\): in_features must be int, got inf",
        ),
        ('[{"type": "ELU", "config": {"alpha": NaN}}]', r"entry 0 \(ELU\): alpha must be float"),
        (_linear(10**12), r"in_features must be int, got 1000000000000 .*at most 2147483647"),
        (_linear(1, 10**12), r"out_features must be int, got 1000000000000 .*at most 2147483647"),
        (
            '[{"type": "Linear", "config": {"in_features": 1'
            + "0" * 5000
            + ', "out_features": 3}}]',
            "not valid JSON",
        ),
        (_linear(True), r"in_features must be int, got True \(bool\)"),
        (_linear("2"), r"in_features must be int, got '2' \(str\)"),
        (_linear(bias="yes"), r"bias must be bool, got 'yes'"),
        (
            [
                {
                    "type": "Conv2d",
                    "config": {"in_channels": 1, "out_channels": 1, "kernel_size": [[3, [3]]]},
                }
            ],
            r"entry 0 \(Conv2d\): kernel_size must be int \| Sequence\[int\]",
        ),
        ([{"type": "Linear", "config": {"in_features": 2}}], "missing argument 'out_features'"),
        ([{"type": "Linear", "config": [2, 3]}], "config must be a JSON object"),
        (
            [
                {
                    "type": "Linear",
                    "config": {"in_features": 2, "out_features": 3, "dtype": "object"},
                }
            ],
            "unknown argument 'dtype'",
        ),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        # no tensor bounds these, but a forward pass would allocate terabytes
        (
            [
                {
                    "type": "Conv2d",
                    "config": {
                        "in_channels": 1,
                        "out_channels": 3,
                        "kernel_size": 3,
                        "padding": 2**20,
                    },
                }
            ],
            r"entry 0 \(Conv2d\): padding 1048576 exceeds 1024",
        ),
        (_conv(padding=[1, 5000], dilation=2), r"entry 0 \(Conv2d\): padding \[1, 5000\] exceeds"),
        (_conv(dilation=2**20, padding="same"), r"entry 0 \(Conv2d\): dilation 1048576 exceeds"),
        (
            [{"type": "AdaptiveAvgPool2d", "config": {"output_size": [2**20, 1]}}],
            r"output_size \[1048576, 1\] makes 1,048,576 cells a map",
        ),
    ],
)
def test_hostile_architectures_are_refused_before_building(tmp_path, architecture, message):
    path = _craft(tmp_path / "evil.safetensors", architecture, _linear_tensors())
    with pytest.raises(io.ModelFileError, match=f"evil.safetensors: .*{message}"):
        io.load(path)


def test_declared_shapes_are_checked_from_the_header_before_allocating(tmp_path, monkeypatch):
    # 200 bytes declaring a 10 GiB layer: refused by comparing with the header, nothing built
    path = _craft(tmp_path / "big.safetensors", _linear(50_000, 50_000), _linear_tensors())
    assert path.stat().st_size < 400
    monkeypatch.setattr(io, "build", lambda *a, **k: pytest.fail("built before checking shapes"))
    with pytest.raises(
        io.ModelFileError, match=r"'0.weight' has shape \(3, 2\), model expects \(50000, 50000\)"
    ):
        io.load(path)
    _craft(path, _linear(), {"0.weight": np.zeros((3, 2), np.float32)})
    with pytest.raises(io.ModelFileError, match=r"missing keys \['0.bias'\]"):
        io.load(path)


def test_memory_hungry_file_fails_cleanly_under_an_address_space_limit(tmp_path):
    # a regression must not take the machine down: load in a child limited to 1 GiB
    path = _craft(tmp_path / "big.safetensors", _linear(2**30, 2**30), _linear_tensors())
    assert "big.safetensors" in run_limited(
        f"from convnp import io\ntry:\n    io.load({str(path)!r})\n"
        "except io.ModelFileError as error:\n    print(error)"
    )


def run_limited(code: str, limit_bytes: int = 2**30, timeout: float = 60) -> str:
    """Run Python code in a child process under RLIMIT_AS; its stdout (fails on a crash)."""
    import subprocess
    import sys

    prelude = (
        f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ("[1, 2]", r"'info' must be a JSON object, got \[1, 2\]"),
        ('{"normalize": "unit"}', "info.normalize must be"),
        ('{"normalize": {"kind": "standard", "mean": ["x"]}}', "info.normalize must be"),
        ('{"input_shape": "abc"}', "info.input_shape must be a list of 1-4 positive ints"),
        ('{"input_shape": [1, 0, 5]}', "info.input_shape must be"),
        ('{"input_shape": [65536, 65536, 65536]}', "info.input_shape must be"),
        ('{"input_shape": [3]}', r"info.input_shape \[3\] does not fit the model"),
        (
            '{"input_shape": [2], "class_names": ["a", "b"]}',
            "info.class_names has 2 names but the model has 3 outputs",
        ),
        ('{"class_names": "abc"}', "info.class_names must be a list of strings"),
        ('{"loss": 3}', "info.loss must be a string"),
        ('{"base_lr": "0.1"}', "info.base_lr must be a finite number"),
        ('{"epochs": true}', "info.epochs must be a positive int"),
        ('{"test_accuracy": NaN}', "info.test_accuracy must be a finite number"),
    ],
)
def test_malformed_info_names_the_file_and_field(tmp_path, info, message):
    path = _craft(tmp_path / "m.safetensors", _linear(), _linear_tensors(), info=info)
    with pytest.raises(io.ModelFileError, match=f"m.safetensors: {message}"):
        io.load(path)
    if "fit the model" not in message and "outputs" not in message:  # needs the model
        with pytest.raises(io.ModelFileError, match=f"m.safetensors: {message}"):
            io.read_info(path)


@pytest.mark.parametrize(("field", "value"), [("dtype", "object"), ("dtype", "<U8"),
                                              ("format_version", "2")])  # fmt: skip
def test_bad_dtype_or_version_metadata(tmp_path, field, value):
    path = _craft(tmp_path / "m.safetensors", _linear(), _linear_tensors(), **{field: value})
    with pytest.raises(io.ModelFileError, match=f"m.safetensors: .*{field.split('_')[-1]}"):
        io.load(path)


def test_non_finite_weights_are_refused_unless_allowed(rng, tmp_path):
    model = _model(rng)
    model[3].params["weight"][0, :2] = [np.nan, np.inf]
    path = tmp_path / "diverged.safetensors"
    io.save(model, path)
    with pytest.raises(
        io.ModelFileError, match=r"'3.weight' contains NaN or inf \(2 of 300.*allow_non_finite=True"
    ):
        io.load(path)
    loaded = io.load(path, allow_non_finite=True)
    np.testing.assert_array_equal(loaded[3].params["weight"], model[3].params["weight"])


def test_declared_tensor_table_matches_every_layer_type():
    """io.DECLARED_TENSORS (used before building) agrees with what the layers allocate, and
    lists every type that allocates (those taking a dtype)."""
    allocating = {
        name for name, cls in io.LAYER_TYPES.items() if "dtype" in inspect.signature(cls).parameters
    }
    assert allocating == set(io.DECLARED_TENSORS)
    table = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    examples = [
        L.Linear(3, 4), L.Linear(3, 4, bias=False), L.Conv1d(4, 2, 3, groups=2),
        L.Conv2d(2, 3, (3, 2), connection_table=table), L.Conv3d(1, 2, 2, bias=False),
        L.LocallyConnected2d(2, 3, (6, 7), 3, padding="same"),
        L.LocallyConnected2d(2, 3, (9, 8), (3, 2), stride=2, padding=1, bias=False),
        L.LocallyConnected2d(1, 2, (5, 5), 2, stride=(2, 1), padding="full"),
        L.LocallyConnected2d(1, 2, (7, 6), 3, stride=3, padding="same"),
        L.FeatureMapCombination(2, 3, 3, kernels="per_input"), L.FeatureMapCombination(2, 3, 3),
        L.EuclideanRBF(4, 5), L.Subsample2d(3, 2), L.BatchNorm2d(3), L.BatchNorm1d(2, affine=False),
        L.BatchNorm3d(2, track_running_stats=False), L.MaxPool2d(2), L.Dropout(0.1),
        L.ConvTranspose1d(4, 6, 3, groups=2), L.ConvTranspose2d(2, 3, (3, 2), bias=False),
        L.ConvTranspose3d(1, 2, 2, stride=2),
    ]  # fmt: skip
    assert {type(layer).__name__ for layer in examples} >= allocating
    model = Sequential(*examples)
    spec = io.architecture(model)
    declared = io.declared_tensors(spec, io.check_architecture(spec))
    assert declared == {name: value.shape for name, value in model.state_dict().items()}


# -- crafted checkpoints -------------------------------------------------------------------
def _checkpoint(tmp_path):
    from convnp.optim import SGD

    model = Sequential(Linear(4, 3), L.Dropout(0.2), Linear(3, 2))
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / io.CHECKPOINT_NAME
    io.save_checkpoint(path, model, optimizer, [{"epoch": 1, "train_loss": 0.5}], {"epochs": 3})
    return path


def _tamper(path, drop=(), tensors=None, **metadata):
    loaded, fields = io.load_tensors(path)
    fields.update(metadata)
    for key in drop:
        fields.pop(key)
    io.save_tensors(path, loaded if tensors is None else tensors(loaded), fields)


PCG_STATE = {"bit_generator": "PCG64", "state": {"state": 1, "inc": 1}, "has_uint32": 0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rng_states": "[]"}, r"'rng_states' must hold a state for layers \['1'\]"),
        ({"rng_states": "{}"}, r"'rng_states' must hold a state for layers \['1'\], got \[\]"),
        ({"rng_states": '{"0": {}}'}, r"'rng_states' must hold a state for layers \['1'\]"),
        ({"rng_states": '{"1": 5}'}, r"rng_states\['1'\] is not a PCG64 state"),
        ({"rng_states": '{"1": {"bit_generator": "MT19937"}}'}, r"rng_states\['1'\] is not"),
        ({"rng_states": json.dumps({"1": {**PCG_STATE, "uinteger": "x"}})}, r"rng_states\['1'\]"),
        ({"rng_states": json.dumps({"1": PCG_STATE})}, r"rng_states\['1'\] is not"),
        ({"optimizer": '{"type": "SGD"}'}, "'optimizer' must be {'type': ..., 'config'"),
        (
            {"optimizer": '{"type": "SGD", "config": {"lr": "0.1"}}'},
            r"optimizer: lr must be float, got '0.1' \(str\)",
        ),
        (
            {"optimizer": '{"type": "SGD", "config": {"lr": 0.1, "foo": 1}}'},
            "optimizer: unknown argument 'foo'",
        ),
        (
            {"optimizer": '{"type": "SGD", "config": {"momentum": 0.9}}'},
            "optimizer: missing argument 'lr'",
        ),
        ({"optimizer": '{"type": "RMSprop", "config": {}}'}, "unknown optimizer 'RMSprop'"),
        ({"optimizer": '{"type": ["SGD"], "config": {}}'}, r"unknown optimizer \['SGD'\]"),
        (
            {"optimizer": '{"type": "SGD", "config": {"lr": 0.1, "lr_mult": {"*.x": 2}}}'},
            r"optimizer: .*lr_mult pattern '\*.x' matches no parameter",
        ),
        ({"optimizer": '{"type": "SGD", "config": {"lr": -1}}'}, "optimizer: SGD: lr must be >= 0"),
        (
            {"optimizer": '{"type": "SGD", "config": {"lr": 0.1}}'},
            r"optimizer: .*unexpected keys \['momentum.0.bias'",
        ),
        ({"history": '"abc"'}, "'history' must be a list of flat JSON objects"),
        ({"history": '[{"epoch": [1]}]'}, "'history' must be a list of flat JSON objects"),
        ({"info": '{"epochs": "3"}'}, "info.epochs must be a positive int"),
        ({"info": '"x"'}, "'info' must be a JSON object"),
        ({"drop": ["history"]}, "'history' is missing"),
        ({"drop": ["optimizer"]}, "'optimizer' is missing"),
        ({"drop": ["rng_states"]}, "'rng_states' is missing"),
        ({"drop": ["architecture"]}, "'architecture' is missing"),
        ({"format": "convnp"}, "not a convnp checkpoint"),
    ],
)
def test_crafted_checkpoints_name_the_file_and_field(tmp_path, change, message):
    path = _checkpoint(tmp_path)
    _tamper(path, **change)
    with pytest.raises(io.ModelFileError, match=f"checkpoint.safetensors: .*{message}"):
        io.resume(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: {**t, "optimizer/step": np.array(1.5)}, "'step' must be a non-negative integer"),
        (lambda t: {**t, "optimizer/step": np.array([1, 2])}, "'step' must be a non-negative"),
        (
            lambda t: {**t, "optimizer/momentum.0.weight": np.zeros((2, 2), np.float32)},
            r"'momentum.0.weight' has shape \(2, 2\), the optimizer expects \(3, 4\)",
        ),
        (lambda t: {**t, "optimizer/bogus": np.zeros(1)}, r"unexpected keys \['bogus'\]"),
        (
            lambda t: {k: v for k, v in t.items() if k != "optimizer/momentum.2.bias"},
            r"missing keys \['momentum.2.bias'\]",
        ),
        (
            lambda t: {**t, "optimizer/momentum.0.bias": np.full(3, np.nan, np.float32)},
            "'optimizer/momentum.0.bias' contains NaN or inf",
        ),
        (lambda t: {**t, "model/0.bias": np.full(3, np.inf, np.float32)}, "'0.bias' contains NaN"),
        (lambda t: {**t, "stray": np.zeros(1)}, r"unexpected tensors \['stray'\]"),
        (
            lambda t: {**t, "model/2.weight": np.zeros((2, 300), np.float32)},
            r"'2.weight' has shape \(2, 300\), model expects \(2, 3\)",
        ),
    ],
)
def test_crafted_checkpoint_tensors(tmp_path, edit, message):
    path = _checkpoint(tmp_path)
    _tamper(path, tensors=edit)
    with pytest.raises(io.ModelFileError, match=f"checkpoint.safetensors: .*{message}"):
        io.resume(path)


def test_checkpoint_with_non_finite_state_loads_when_allowed(tmp_path):
    path = _checkpoint(tmp_path)
    _tamper(path, tensors=lambda t: {**t, "model/0.bias": np.full(3, np.nan, np.float32)})
    model, optimizer, history, info = io.resume(path, allow_non_finite=True)
    assert np.isnan(model[0].params["bias"]).all()
    assert history == [{"epoch": 1, "train_loss": 0.5}] and info == {"epochs": 3}


def test_gelu_written_before_approximate_existed_loads_as_the_tanh_form():
    from convnp.io import build

    (old,) = build([{"type": "GELU", "config": {}}])
    assert old.approximate == "tanh"
    (new,) = build([{"type": "GELU", "config": {"approximate": "none"}}])
    assert new.approximate == "none"
