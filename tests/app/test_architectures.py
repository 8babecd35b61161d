"""The architecture string grammar and TOML files (the built-in recipes: test_zoo.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from convnp.app import architectures
from convnp.layers import (
    AvgPool2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Subsample2d,
    Tanh,
)


def _types(model):
    return [type(layer) for layer in model]


def test_classic_string_is_the_deeplearntoolbox_network():
    model = architectures.from_string("6c5-2s-12c5-2s")
    assert _types(model) == [Conv2d, Sigmoid, AvgPool2d, Conv2d, Sigmoid, AvgPool2d, Flatten,
                             Linear, Sigmoid]  # fmt: skip
    assert model[0].flip_kernel and model[3].flip_kernel
    assert model[3].params["weight"].shape == (12, 6, 5, 5)
    assert model[7].params["weight"].shape == (10, 192)


def test_modern_string_with_explicit_activations():
    model = architectures.from_string("32c3p1-relu-2m-64c3p1s2-relu-2ms1-128f-tanh", (3, 32, 32), 7)
    assert _types(model) == [Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, MaxPool2d, Flatten, Linear,
                             Tanh, Linear]  # fmt: skip
    assert model[3].stride == (2, 2) and model[3].padding == (1, 1)
    assert model[5].stride == (1, 1)
    assert not model[0].flip_kernel
    assert model.forward(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 7)


def test_bouvrie_subsampling_token():
    model = architectures.from_string("4c3-relu-2b")
    assert isinstance(model[2], Subsample2d) and model[2].channels == 4


@pytest.mark.parametrize(
    "text,token,problem",
    [
        ("6c5-2x-12c5", "'2x'", "unknown token"),
        ("6c5-2s-relu-4f-3c3", "'3c3'", "convolution needs (C, H, W) input"),
        ("6c40", "'6c40'", "larger than the padded input"),
        ("2ss2", "'2ss2'", "only max pooling takes a stride"),
        ("6c5-25s", "'25s'", "larger than"),
    ],
)
def test_errors_point_at_the_bad_token(text, token, problem):
    with pytest.raises(ValueError) as error:
        architectures.from_string(text)
    message = str(error.value)
    assert token in message and problem in message
    assert "^" in message and "tokens:" in message


def test_toml_file(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(
        '[[layers]]\ntype = "Conv2d"\nin_channels = 1\nout_channels = 3\nkernel_size = 3\n'
        '[[layers]]\ntype = "ReLU"\n[[layers]]\ntype = "Flatten"\n'
        '[[layers]]\ntype = "Linear"\nin_features = 2028\nout_features = 10\n'
    )
    model = architectures.from_toml(path, rng=np.random.default_rng(0))
    assert _types(model) == [Conv2d, ReLU, Flatten, Linear]
    assert model.forward(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)
    path.write_text('[[layers]]\ntype = "Conv9d"\n')
    with pytest.raises(ValueError, match="net.toml.*unknown layer type 'Conv9d'"):
        architectures.from_toml(path)
    path.write_text("layers = [")
    with pytest.raises(ValueError, match="cannot read TOML"):
        architectures.from_toml(path)


# -- degenerate strings and hostile TOML (issue 12) ----------------------------------------
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("6c5s0", r"stride.* must be >= 1 \(token 1, '6c5s0'\)"),  # was silently stride 1
        ("6c5-2ms0", r"stride.* must be >= 1 \(token 2, '2ms0'\)"),
        ("", "is empty"),
        ("  ", "is empty"),
        ("6c0", r"kernel_size.* must be >= 1 \(token 1"),
        ("0c5", "out_channels must be >= 1"),
        ("0f", "out_features must be >= 1"),
        ("6c5-0s", r"kernel_size.* must be >= 1 \(token 2"),
        ("99999c99", r"99999c99': this layer would have 980,090,199 weights \(at most"),
        ("6c5p100000", "padded maps of 40,011,200,784 values"),
        ("48825c5p84", "output maps of 1,799,884,800 values"),  # found by the fuzzer
        ("1c5000p5000", r"patches of 632,271,025,000,000 values"),
        ("1c1p2000-1000ms1", r"patches of 9,174,841,000,000 values \(at most .*token 2"),
        ("1000000c1", r"output maps of 784,000,000 values \(at most 268,435,456\) \(token 1"),
        ("9" * 5000 + "f", r"Exceeds the limit .* \(token 1"),
        ("d1.5", r"p must be in \[0, 1\]"),
        ("6c5--2s", r"unknown token \(token 2, ''\)"),
    ],
)
def test_degenerate_strings_are_clear_errors(text, problem):
    with pytest.raises(ValueError, match=problem):
        architectures.from_string(text)


def test_output_layer_size_is_bounded():
    with pytest.raises(ValueError, match="the output layer: this layer would have 2,000,000,000"):
        architectures.from_string("200000f", (1, 1, 1), 10_000)


def test_empty_arch_on_the_command_line_is_an_error_not_the_default(tmp_path):
    command = [sys.executable, "-m", "convnp", "train", "--arch", "", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "architecture '' is empty" in result.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("layers = [1, 2]", r"layers\[0\] must be a table"),
        ("layers = ['Conv2d']", r"layers\[0\] must be a table"),
        ("layers = 3", "expected one or more"),
        (
            "[[layers]]\ntype = 'Linear'\nin_features = '3'\nout_features = 2",
            r"entry 0 \(Linear\): in_features must be int, got '3'",
        ),
        (
            "[[layers]]\ntype = 'Linear'\nin_features = 3.5\nout_features = 2",
            "in_features must be int",
        ),
        (
            "[[layers]]\ntype = 'Linear'\nin_features = 99999999999\nout_features = 2",
            "in_features must be int",
        ),
        ("[[layers]]\ntype = 'ELU'\nalpha = inf", r"entry 0 \(ELU\): alpha must be float, got inf"),
        ("[[layers]]\ntype = 'ELU'\nalpha = 1979-05-27", r"alpha must be float, got datetime"),
        (
            "[[layers]]\ntype = 'Conv2d'\nin_channels = 1\nout_channels = 2\nkernel_size = [[3]]",
            r"kernel_size must be int \| Sequence\[int\]",
        ),
        ("[[layers]]\ntype = ['Conv2d']", r"unknown layer type \['Conv2d'\]"),
        (
            "[[layers]]\ntype = 'Linear'\nin_features = 100000\nout_features = 100000",
            r"weights 0.weight of shape \(100000, 100000\) exceed 268,435,456",
        ),
        ("a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("a" + ".a" * 100 + " = 1", "a dotted key of more than 64 parts"),
        ("a = {" + "b." * 80 + "c = 1}", "a dotted key of more than 64 parts"),
        ("".join(f"k{i} = 1\n" for i in range(10_001)), "more than 10,000 keys"),
        ("[[layers]\n", "cannot read TOML"),
    ],
)
def test_hostile_toml_files_are_clear_errors(tmp_path, text, problem):  # fmt: skip
    path = tmp_path / "net.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"net.toml: .*{problem}"):
        architectures.from_toml(path)


def test_toml_size_is_capped_before_parsing(tmp_path):
    path = tmp_path / "net.toml"
    path.write_bytes(b"# " + b"x" * architectures.MAX_TOML_BYTES)
    with pytest.raises(ValueError, match="net.toml: larger than 1,048,576 bytes"):
        architectures.from_toml(path)
    path.write_bytes(b"\xff\xfe[[layers]]")
    with pytest.raises(ValueError, match="net.toml: not UTF-8"):
        architectures.from_toml(path)
    with pytest.raises(ValueError, match="missing.toml: cannot read"):
        architectures.from_toml(tmp_path / "missing.toml")
