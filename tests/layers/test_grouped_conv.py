"""Grouped and depthwise Conv1d/2d/3d in PyTorch's (out, in/groups, *k) weight layout:
finite differences, PyTorch parity, storage and initialisation, and model files written
in the old dense masked layout (issue 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from helpers import assert_gradients_match_numeric, assert_matches_torch

from convnp import Sequential, io
from convnp.layers import Conv1d, Conv2d, Conv3d, Flatten, Linear, ReLU
from convnp.optim import SGD, Adam

CLASSES = {1: Conv1d, 2: Conv2d, 3: Conv3d}

# (nd, in, out, groups, spatial, kernel, stride, padding, dilation)
GROUPED = [
    (1, 4, 6, 2, (11,), 3, 2, 1, 2),  # grouped
    (1, 3, 6, 3, (9,), 4, 1, "same", 1),  # depthwise, multiplier 2
    (2, 6, 4, 2, (7, 6), (3, 2), (2, 1), (1, 2), (1, 2)),
    (2, 4, 4, 4, (8, 7), 3, 2, 1, 2),  # depthwise strided, dilated
    (2, 3, 3, 3, (5, 6), 3, 1, "full", 1),
    (2, 8, 4, 4, (6, 6), 2, 1, "valid", 1),
    (3, 4, 2, 2, (5, 4, 6), (2, 3, 2), (1, 2, 1), (1, 0, 1), (2, 1, 1)),
    (3, 2, 4, 2, (4, 5, 4), 3, 1, "same", 1),  # depthwise 3-D
]


def _layer(nd, cin, cout, groups, kernel, stride, padding, dilation, rng, **kwargs):
    return CLASSES[nd](
        cin, cout, kernel, stride, padding, dilation, groups, dtype=np.float64, rng=rng, **kwargs
    )


@pytest.mark.parametrize("case", GROUPED)
@pytest.mark.parametrize("flip_kernel", [False, True])
def test_grouped_gradients_match_finite_differences(case, flip_kernel, rng):
    nd, cin, cout, groups, spatial, kernel, stride, padding, dilation = case
    layer = _layer(
        nd, cin, cout, groups, kernel, stride, padding, dilation, rng, flip_kernel=flip_kernel
    )
    assert layer.params["weight"].shape == (cout, cin // groups, *layer.kernel_size)
    x = rng.standard_normal((2, cin, *spatial))
    assert_gradients_match_numeric(layer, x)


@pytest.mark.parametrize("case", [c for c in GROUPED if c[7] != "full"])  # torch has no "full"
def test_grouped_matches_torch_module(case, rng):
    """The torch module with convnp's weights (copied as they are: the same layout)."""
    torch = pytest.importorskip("torch")
    nd, cin, cout, groups, spatial, kernel, stride, padding, dilation = case
    layer = _layer(nd, cin, cout, groups, kernel, stride, padding, dilation, rng)
    module_type = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[nd]
    twin = module_type(cin, cout, kernel, stride, padding, dilation, groups)
    x = rng.standard_normal((3, cin, *spatial))
    assert_matches_torch(layer, twin, x, rng)
    assert_matches_torch(layer.astype(np.float32), twin, x.astype(np.float32), rng)


def test_grouped_matches_torch_on_random_shapes(rng):
    """Random channels, groups, kernels, strides, paddings, dilations and padding modes."""
    torch = pytest.importorskip("torch")
    for _ in range(12):
        nd = int(rng.integers(1, 4))
        groups = int(rng.integers(1, 5))
        cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        kernel = tuple(int(k) for k in rng.integers(1, 4, nd))
        stride = tuple(int(s) for s in rng.integers(1, 3, nd))
        dilation = tuple(int(d) for d in rng.integers(1, 3, nd))
        padding = tuple(int(p) for p in rng.integers(0, 2, nd))
        mode = str(rng.choice(["zeros", "reflect", "replicate", "circular"]))
        spatial = tuple(int(s) for s in rng.integers(4, 8, nd))
        layer = _layer(
            nd, cin, cout, groups, kernel, stride, padding, dilation, rng, padding_mode=mode
        )
        module_type = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[nd]
        twin = module_type(cin, cout, kernel, stride, padding, dilation, groups, padding_mode=mode)
        x = rng.standard_normal((2, cin, *spatial))
        assert_matches_torch(layer, twin, x, rng)


def test_grouped_padding_mode_gradients_match_finite_differences(rng):
    layer = Conv2d(4, 4, 3, padding=(1, 2), groups=4, padding_mode="reflect", dtype=np.float64)
    assert_gradients_match_numeric(layer, rng.standard_normal((2, 4, 5, 6)))


def test_depthwise_stores_one_in_channels_th_of_the_dense_weights():
    dense = Conv2d(256, 256, 3, padding=1)
    depthwise = Conv2d(256, 256, 3, padding=1, groups=256)
    assert depthwise.params["weight"].shape == (256, 1, 3, 3)
    assert dense.params["weight"].size == 256 * depthwise.params["weight"].size
    assert Sequential(depthwise).num_parameters() == 256 * 9 + 256
    grouped = Conv2d(64, 32, 3, groups=4)
    assert grouped.params["weight"].shape == grouped.grads["weight"].shape == (32, 16, 3, 3)


def test_init_fan_in_is_torchs_in_channels_over_groups_times_kernel(rng):
    for groups in (1, 4, 16):
        layer = Conv2d(16, 32, (3, 2), groups=groups, rng=rng)
        bound = 1 / np.sqrt(16 // groups * 6)  # PyTorch: 1/sqrt(in/groups · prod(kernel))
        for name in ("weight", "bias"):
            values = np.abs(layer.params[name])
            assert values.max() <= bound and values.max() > 0.8 * bound, (groups, name)


def test_grouped_output_maps_see_only_their_group(rng):
    """u_j depends on the input maps of j's group only (SPEC §2, M_j)."""
    layer = Conv2d(6, 4, 3, padding=1, groups=2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((1, 6, 5, 5))
    changed = x.copy()
    changed[:, 3:] = rng.standard_normal((1, 3, 5, 5))  # group 1's inputs
    y, y_changed = layer.forward(x), layer.forward(changed)
    np.testing.assert_array_equal(y[:, :2], y_changed[:, :2])  # group 0's outputs
    assert not np.allclose(y[:, 2:], y_changed[:, 2:])


def test_grouped_errors(rng):
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        Conv2d(3, 6, 3, groups=2)
    with pytest.raises(ValueError, match="groups=4 must divide .* out_channels=6"):
        Conv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="connection_table or groups, not both"):
        Conv2d(2, 2, 3, groups=2, connection_table=np.eye(2, dtype=bool))
    layer = Conv2d(4, 4, 3, groups=2, rng=rng)
    with pytest.raises(ValueError, match=r"expected input \(N, 4, H, W\)"):
        layer.forward(np.zeros((1, 2, 5, 5), np.float32))


# -- model files in the old layout ---------------------------------------------------------
def _dense(weight: np.ndarray, groups: int, in_channels: int) -> np.ndarray:
    """The (O, C, *k) weight older convnp stored: the (O, C/groups, *k) kernels on the
    diagonal blocks and zeros elsewhere (written out here independently of io)."""
    out_channels, per_group = weight.shape[0], in_channels // groups
    dense = np.zeros((out_channels, in_channels, *weight.shape[2:]), weight.dtype)
    for j in range(out_channels):
        group = j // (out_channels // groups)
        dense[j, group * per_group : (group + 1) * per_group] = weight[j]
    return dense


def _grouped_model(rng):
    return Sequential(
        Conv2d(4, 6, 3, padding=1, groups=2, rng=rng),
        ReLU(),
        Conv2d(6, 6, 3, groups=6, bias=False, flip_kernel=True, rng=rng),
        Flatten(),
        Linear(6 * 3 * 3, 3, rng=rng),
    )


def _rewrite_in_old_layout(path, grouped):
    """Rewrite a saved model file or checkpoint as older convnp wrote it: the weights of
    grouped convs {"<index>.weight": (groups, in_channels)} dense, in a checkpoint the
    model's ("model/0.weight") and the optimizer's state of them ("optimizer/momentum.0.weight")."""
    tensors, metadata = io.load_tensors(path)
    for key in tensors:
        name = key.partition(".")[2] if key.startswith("optimizer/") else key.split("/")[-1]
        if name in grouped:
            tensors[key] = _dense(tensors[key], *grouped[name])
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))


def test_old_dense_model_file_loads_and_converts(rng, tmp_path):
    model = _grouped_model(rng)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    path = tmp_path / "old.safetensors"
    io.save(model, path, {"input_shape": [4, 5, 5]})
    _rewrite_in_old_layout(path, {"0.weight": (2, 4), "2.weight": (6, 6)})
    assert io.read_header(path)[1]["0.weight"] == (6, 4, 3, 3)  # really the old layout
    loaded = io.load(path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    io.save(loaded, path)  # written back in the new layout
    assert io.read_header(path)[1]["2.weight"] == (6, 1, 3, 3)


def test_old_dense_checkpoint_resumes_with_converted_optimizer_state(rng, tmp_path):
    model = _grouped_model(rng)
    x = rng.standard_normal((4, 4, 5, 5)).astype(np.float32)
    optimizer = Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        model.backward(np.ones_like(model.forward(x)))
        optimizer.step()
    path = tmp_path / io.CHECKPOINT_NAME
    io.save_checkpoint(path, model, optimizer, [{"epoch": 1}])
    _rewrite_in_old_layout(path, {"0.weight": (2, 4), "2.weight": (6, 6)})
    stored = io.read_header(path)[1]
    assert stored["model/0.weight"] == stored["optimizer/exp_avg_sq.0.weight"] == (6, 4, 3, 3)
    resumed, resumed_optimizer, history, _ = io.resume(path)
    assert history == [{"epoch": 1}]
    for key, value in optimizer.state_dict().items():
        np.testing.assert_array_equal(resumed_optimizer.state_dict()[key], value, err_msg=key)
    for step_model, step_optimizer in ((model, optimizer), (resumed, resumed_optimizer)):
        step_model.backward(np.ones_like(step_model.forward(x)))
        step_optimizer.step()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)


def test_old_sgd_checkpoint_momentum_converts(rng, tmp_path):
    model = Sequential(Conv1d(4, 4, 3, groups=4, rng=rng))
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.backward(np.ones_like(model.forward(rng.standard_normal((2, 4, 6)).astype(np.float32))))
    optimizer.step()
    path = tmp_path / io.CHECKPOINT_NAME
    io.save_checkpoint(path, model, optimizer, [])
    _rewrite_in_old_layout(path, {"0.weight": (4, 4)})
    _, resumed_optimizer, _, _ = io.resume(path)
    momentum = resumed_optimizer.state_dict()["momentum.0.weight"]
    np.testing.assert_array_equal(momentum, optimizer.state_dict()["momentum.0.weight"])


def test_grouped_weight_of_any_other_shape_is_refused(rng, tmp_path):
    """Only the declared (O, C/groups, *k) and the old dense (O, C, *k) shapes load."""
    model = Sequential(Conv2d(4, 6, 3, groups=2, rng=rng))
    path = tmp_path / "model.safetensors"
    io.save(model, path)
    tensors, metadata = io.load_tensors(path)
    for shape in [(6, 4, 3, 2), (6, 3, 3, 3), (12, 2, 3, 3), (6, 8, 3, 3)]:
        tensors["0.weight"] = np.zeros(shape, np.float32)
        path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))
        expected = r"'0.weight' has shape .*expects \(6, 2, 3, 3\) or \(6, 4, 3, 3\) \(older"
        with pytest.raises(io.ModelFileError, match=expected):
            io.load(path)


def test_ungrouped_and_table_convs_accept_only_their_one_shape(rng, tmp_path):
    table = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    model = Sequential(Conv2d(2, 3, 3, connection_table=table, rng=rng), Conv2d(3, 2, 1))
    path = tmp_path / "model.safetensors"
    io.save(model, path)
    tensors, metadata = io.load_tensors(path)
    tensors["0.weight"] = np.zeros((3, 1, 3, 3), np.float32)  # a "grouped" shape: no groups
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))
    with pytest.raises(io.ModelFileError, match=r"expects \(3, 2, 3, 3\) \(as its architecture"):
        io.load(path)


def test_groups_that_do_not_divide_are_refused_before_reading_tensors(rng, tmp_path):
    path = tmp_path / "model.safetensors"
    io.save(Sequential(Conv2d(4, 4, 3, groups=2, rng=rng)), path)
    tensors, metadata = io.load_tensors(path)
    for groups in (0, 3, -2):
        spec = json.loads(metadata["architecture"])
        spec[0]["config"]["groups"] = groups
        bad = {**metadata, "architecture": json.dumps(spec)}
        path.write_bytes(safetensors.numpy.save(tensors, metadata=bad))
        expected = rf"entry 0 \(Conv2d\): inconsistent .*groups={groups} must divide in_channels=4"
        with pytest.raises(io.ModelFileError, match=expected):
            io.load(path)


def test_groups_benchmark_reports_every_figure(tmp_path):
    """benchmarks/groups.py --quick runs and reports weights and times for every groups."""
    pytest.importorskip("torch")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "groups.py"
    output = tmp_path / "groups.json"
    completed = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    rows = json.loads(output.read_text())["rows"]
    assert [(row["channels"], row["groups"]) for row in rows] == [(16, 1), (16, 4), (16, 16)]
    for row in rows:
        assert row["convnp"] == row["torch"] == 16 * 16 // row["groups"] * 9
        assert all(ms > 0 for ms in row["ms"].values()) and len(row["ms"]) == 4
        assert row["convnp_ratio_to_groups_1"]["train"] > 0
    assert "g/1" in completed.stdout
