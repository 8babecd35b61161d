"""The convolution primitives (layers/_conv_ops.py): conv_forward, conv_weight_grad and
conv_transpose against a plain NumPy reference, blocked against one-shot, the three patch
layouts against each other, the adjoint identity, and the bounded, reused workspace.

ShiftedLayout (stride 1, flat shifted images with unused columns) must agree with
StridedLayout (the general im2col) on the three products a convolution takes from them:
the output, the weight gradient and the input gradient, for 1-D, 2-D and 3-D inputs,
padding (including uneven 'same') and dilation; InterleavedLayout (samples side by side)
with both, for every case, strides and groups included.
"""

from __future__ import annotations

import copy
import math
import pickle
import threading
import tracemalloc

import numpy as np
import pytest

from convnp.layers import Conv2d, _conv_ops, _windows
from convnp.layers._conv_ops import (
    ConvGeometry,
    Workspace,
    conv_forward,
    conv_transpose,
    conv_weight_grad,
)

# (spatial, kernel, padding, dilation)
GEOMETRIES = [
    ((11,), (3,), "valid", (1,)),
    ((9,), (4,), "same", (2,)),
    ((7, 6), (3, 2), "same", (1, 1)),
    ((8, 9), (3, 3), "full", (2, 1)),
    ((6, 5), (1, 3), (0, 1), (1, 1)),
    ((5, 6, 4), (2, 3, 2), (1, 1, 0), (1, 1, 1)),
]

# (spatial, kernel, stride, padding, dilation, groups): 1-D, 2-D, 3-D
CASES = [
    ((13,), (3,), (2,), 1, (1,), 1),
    ((11,), (4,), (1,), "same", (2,), 2),
    ((9, 8), (3, 2), (2, 1), (1, 2), (1, 2), 1),
    ((10, 11), (3, 3), (1, 1), 1, (1, 1), 4),
    ((8, 9), (3, 3), (1, 1), "full", (2, 1), 2),
    ((7, 7), (5, 5), (3, 2), 2, (1, 1), 1),
    ((5, 6, 4), (2, 3, 2), (1, 2, 1), (1, 1, 0), (1, 1, 1), 1),
    ((6, 5, 5), (3, 3, 3), (1, 1, 1), 1, (1, 1, 1), 2),
]


def _geometry(kernel, stride, padding, dilation):
    pads = _windows.resolve_padding(padding, kernel, dilation)
    return ConvGeometry(tuple(kernel), tuple(stride), pads, tuple(dilation))


def _problem(case, rng, batch=5, channels=4, out_channels=8):
    spatial, kernel, stride, padding, dilation, groups = case
    geometry = _geometry(kernel, stride, padding, dilation)
    x = rng.standard_normal((batch, channels, *spatial))
    weight = rng.standard_normal((out_channels, channels // groups, *kernel))
    bias = rng.standard_normal(out_channels)
    dy = rng.standard_normal((batch, out_channels, *geometry.output_shape(spatial)))
    return geometry, groups, x, weight, bias, dy


def _reference(geometry, groups, x, weight, bias, dy):
    """y, ∂E/∂k from the windows view (einsum, no patch matrix), per group."""
    nd = len(geometry.kernel_size)
    out_shape = geometry.output_shape(x.shape[2:])
    x_padded = _windows.pad_spatial(x, geometry.pads)
    patches = _windows.windows(
        x_padded, geometry.kernel_size, geometry.stride, geometry.dilation, out_shape
    )  # (N, C, *out, *k)
    n, channels = x.shape[:2]
    out_channels = weight.shape[0]
    cg, og = channels // groups, out_channels // groups
    spatial_axes = tuple(range(2, 2 + nd))
    kernel_axes = tuple(range(2 + nd, 2 + 2 * nd))
    ys, dweights = [], []
    for g in range(groups):
        p = patches[:, g * cg : (g + 1) * cg]
        w = weight[g * og : (g + 1) * og]
        y = np.tensordot(p, w, axes=((1, *kernel_axes), (1, *range(2, 2 + nd))))
        ys.append(np.moveaxis(y, -1, 1))  # (N, Og, *out)
        d = dy[:, g * og : (g + 1) * og]
        dweights.append(np.tensordot(d, p, axes=((0, *spatial_axes), (0, *spatial_axes))))
    y = np.concatenate(ys, axis=1) + bias.reshape((-1,) + (1,) * nd)
    return y, np.concatenate(dweights, axis=0)


def _all_three(geometry, groups, x, weight, bias, dy, workspace):
    return (
        conv_forward(x, weight, bias, geometry, groups=groups, workspace=workspace),
        conv_weight_grad(x, dy, geometry, groups=groups, workspace=workspace),
        conv_transpose(dy, weight, geometry, x.shape[2:], groups=groups, workspace=workspace),
    )


def _block_count(geometry, x, out_channels, workspace):
    blocks = _conv_ops._blocks(x.shape, out_channels, geometry, workspace.limit_bytes, x.dtype)
    return len(list(blocks))


@pytest.mark.parametrize("case", CASES)
def test_one_shot_matches_plain_numpy_reference(case, rng):
    geometry, groups, x, weight, bias, dy = _problem(case, rng)
    y, dweight, _ = _all_three(geometry, groups, x, weight, bias, dy, Workspace(2**30))
    y_ref, dweight_ref = _reference(geometry, groups, x, weight, bias, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dweight, dweight_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_transpose_is_the_adjoint_of_forward(case, rng):
    """<conv(x, k), δ> = <x, conv_transpose(δ, k)>: the input gradient is the adjoint."""
    geometry, groups, x, weight, _, dy = _problem(case, rng)
    y = conv_forward(x, weight, None, geometry, groups=groups)
    dx = conv_transpose(dy, weight, geometry, x.shape[2:], groups=groups)
    assert dx.shape == x.shape
    np.testing.assert_allclose(np.vdot(y, dy), np.vdot(x, dx), rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("limit", ["two_samples", "one_row"])
def test_blocked_equals_one_shot(case, limit, rng):
    """Blocks of 2 of 5 samples (uneven: 2, 2, 1), or of one output row of one sample:
    the block sums equal the one-shot result in float64 at 1e-12."""
    geometry, groups, x, weight, bias, dy = _problem(case, rng)
    out_channels = weight.shape[0]
    one_shot = Workspace(2**30)
    assert _block_count(geometry, x, out_channels, one_shot) == 1
    spatial = x.shape[2:]
    taps = math.prod(geometry.kernel_size)
    padded_row = math.prod(s + b + a for s, (b, a) in zip(spatial[1:], geometry.pads[1:]))
    row_bytes = (x.shape[1] * taps + out_channels) * padded_row * x.itemsize
    rows = geometry.output_shape(spatial)[0]
    small = Workspace(2 * rows * row_bytes if limit == "two_samples" else row_bytes)
    expected_blocks = 3 if limit == "two_samples" else len(x) * rows
    assert _block_count(geometry, x, out_channels, small) == expected_blocks
    expected = _all_three(geometry, groups, x, weight, bias, dy, one_shot)
    got = _all_three(geometry, groups, x, weight, bias, dy, small)
    for name, g, e in zip(("output", "weight grad", "input grad"), got, expected):
        assert g.shape == e.shape, name
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_parts_of_a_block_equal_one_part(case, rng, monkeypatch):
    """A forward block worked a part at a time (here one sample per part, PART_BYTES
    tiny): the output, and the weight gradient (which then cannot reuse the forward's
    patches and gathers again), equal the one-part results in float64 at 1e-12."""
    geometry, groups, x, weight, bias, dy = _problem(case, rng)
    out_channels = weight.shape[0]
    expected = _all_three(geometry, groups, x, weight, bias, dy, Workspace(2**30))
    monkeypatch.setattr(_conv_ops, "PART_BYTES", 1)
    (block,) = _conv_ops._blocks(x.shape, out_channels, geometry, 2**30, x.dtype)
    assert block.parts == [slice(n, n + 1) for n in range(len(x))]
    spatial, taps = x.shape[2:], math.prod(geometry.kernel_size)
    padded_row = math.prod(s + b + a for s, (b, a) in zip(spatial[1:], geometry.pads[1:]))
    row_bytes = (x.shape[1] * taps + out_channels) * padded_row * x.itemsize
    two_samples = 2 * geometry.output_shape(spatial)[0] * row_bytes  # blocks 2, 2, 1
    for limit in (2**30, two_samples):
        got = _all_three(geometry, groups, x, weight, bias, dy, Workspace(limit))
        for name, g, e in zip(("output", "weight grad", "input grad"), got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=f"{name} {limit}")


@pytest.mark.parametrize("spatial, kernel, padding, dilation", GEOMETRIES)
@pytest.mark.parametrize("limit", [2**30, 600])
def test_shifted_layout_matches_strided(spatial, kernel, padding, dilation, limit, monkeypatch):
    rng = np.random.default_rng(len(spatial) * 100 + sum(spatial))
    case = (spatial, kernel, (1,) * len(spatial), padding, dilation, 1)
    geometry, groups, x, weight, bias, dy = _problem(case, rng, batch=3, channels=2)
    shifted_block = _conv_ops._ShiftedLayout(
        x.shape, geometry, range(3), None, weight.shape[0], x.itemsize
    )
    assert shifted_block.positions >= math.prod(shifted_block.out_shape)  # unused columns
    shifted = _all_three(geometry, groups, x, weight, bias, dy, Workspace(limit))
    monkeypatch.setattr(_conv_ops, "_layout_for", lambda geometry: _conv_ops._StridedLayout)
    strided = _all_three(geometry, groups, x, weight, bias, dy, Workspace(limit))
    for got, expected in zip(shifted, strided):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert shifted[0].shape == (3, weight.shape[0], *geometry.output_shape(spatial))
    assert shifted[2].shape == x.shape


def _interleaved_blocks(samples):
    """A ``_blocks`` that lays every block out samples side by side, whatever the geometry."""

    def blocks(x_shape, out_channels, geometry, limit_bytes, dtype):
        n, itemsize = x_shape[0], np.dtype(dtype).itemsize
        for start in range(0, n, samples):
            batch = range(start, min(n, start + samples))
            yield _conv_ops._InterleavedLayout(
                x_shape, geometry, batch, None, out_channels, itemsize
            )

    return blocks


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("samples", [5, 2])
def test_interleaved_layout_matches_the_others(case, samples, rng, monkeypatch):
    """Samples side by side (any stride, dilation, groups, 1-D to 3-D; one block of 5, or
    blocks of 2, 2, 1) give the shifted and strided layouts' three results at 1e-12, also
    from reused buffers full of NaN (the slab's padding is written, not assumed)."""
    geometry, groups, x, weight, bias, dy = _problem(case, rng)
    expected = _all_three(geometry, groups, x, weight, bias, dy, Workspace(2**30))
    monkeypatch.setattr(_conv_ops, "_blocks", _interleaved_blocks(samples))
    workspace = Workspace(2**30)
    for _ in range(2):
        got = _all_three(geometry, groups, x, weight, bias, dy, workspace)
        for name, g, e in zip(("output", "weight grad", "input grad"), got, expected):
            assert g.shape == e.shape, name
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=name)
        _poison(workspace)


@pytest.mark.parametrize(
    "channels, out_channels, kernel, size, padding, batch, interleaved",
    [
        (6, 16, 5, 14, 0, 32, True),  # lenet5's second convolution
        (6, 12, 5, 12, 0, 25, True),  # bouvrie's
        (32, 64, 3, 14, 1, 64, True),  # modern's
        (6, 16, 5, 14, 0, 7, False),  # too few samples
        (1, 6, 5, 28, 2, 32, False),  # few unused columns next to the maps to transpose
        (1, 32, 3, 28, 1, 64, False),
    ],
)
def test_interleaved_layout_where_it_is_the_faster(
    channels, out_channels, kernel, size, padding, batch, interleaved
):
    kernel = (kernel, kernel)
    geometry = _geometry(kernel, (1, 1), padding, (1, 1))
    blocks = list(
        _conv_ops._blocks((batch, channels, size, size), out_channels, geometry, 2**23, np.float32)
    )
    kinds = {type(block) for block in blocks}
    assert kinds == {_conv_ops._InterleavedLayout if interleaved else _conv_ops._ShiftedLayout}
    assert sum(block.batch for block in blocks) == batch
    if interleaved:  # blocks of INTERLEAVED_BYTES, one part each
        for block in blocks:
            assert block.parts == [slice(0, block.batch)]
            rows = block.matrix_rows + out_channels
            assert rows * block.columns * block.batch * 4 <= _conv_ops.INTERLEAVED_BYTES


def test_interleaved_layout_of_a_small_network_matches_the_reference(rng):
    """lenet5's second convolution at a batch the interleaved layout takes (float64): the
    output and weight gradient against the einsum reference, the input gradient by the
    adjoint identity, and the forward's patch matrix reused by the weight gradient."""
    geometry = _geometry((5, 5), (1, 1), 0, (1, 1))
    x = rng.standard_normal((9, 6, 14, 14))
    weight = rng.standard_normal((16, 6, 5, 5))
    bias = rng.standard_normal(16)
    dy = rng.standard_normal((9, 16, 10, 10))
    workspace = Workspace()
    (block,) = workspace.plan(x.shape, 16, geometry, x.dtype).blocks
    assert isinstance(block, _conv_ops._InterleavedLayout)
    y, dweight, dx = _all_three(geometry, 1, x, weight, bias, dy, workspace)
    y_ref, dweight_ref = _reference(geometry, 1, x, weight, bias, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dweight, dweight_ref, rtol=1e-12, atol=1e-12)
    no_bias = conv_forward(x, weight, None, geometry, workspace=workspace)
    np.testing.assert_allclose(np.vdot(no_bias, dy), np.vdot(x, dx), rtol=1e-12)
    gathers = []
    original = _conv_ops._InterleavedLayout.gather_parts
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            _conv_ops._InterleavedLayout,
            "gather_parts",
            lambda self, x, scratch: gathers.append(1) or original(self, x, scratch),
        )
        conv_forward(x, weight, bias, geometry, workspace=workspace)
        reused = conv_weight_grad(x, dy, geometry, workspace=workspace)
    assert len(gathers) == 1
    np.testing.assert_array_equal(reused, dweight)


def test_interleaved_input_grad_reuses_the_weight_grads_delta_of_the_same_dy_only(rng, monkeypatch):
    geometry = _geometry((3, 3), (1, 1), 1, (1, 1))
    x = rng.standard_normal((8, 6, 7, 7))
    weight = rng.standard_normal((4, 6, 3, 3))
    dy, other = rng.standard_normal((2, 8, 4, 7, 7))
    monkeypatch.setattr(_conv_ops, "_blocks", _interleaved_blocks(3))  # blocks 3, 3, 2
    expected = [conv_transpose(d, weight, geometry, (7, 7)) for d in (dy, other)]
    deltas = []
    original = _conv_ops._InterleavedLayout._transposed_delta
    monkeypatch.setattr(
        _conv_ops._InterleavedLayout,
        "_transposed_delta",
        lambda self, dy, scratch: deltas.append(1) or original(self, dy, scratch),
    )
    workspace = Workspace()
    conv_weight_grad(x, dy, geometry, workspace=workspace)
    assert len(deltas) == 3
    got = conv_transpose(dy, weight, geometry, (7, 7), workspace=workspace)
    assert len(deltas) == 5  # the first block's δ, the weight gradient's last, is reused
    np.testing.assert_array_equal(got, expected[0])
    conv_weight_grad(x, dy, geometry, workspace=workspace)  # reuses the last block's
    assert len(deltas) == 7
    got = conv_transpose(other, weight, geometry, (7, 7), workspace=workspace)
    assert len(deltas) == 10  # another dy: all its own
    np.testing.assert_array_equal(got, expected[1])


def test_stride_one_uses_shifted_layout_and_larger_strides_the_general_one():
    pads = ((0, 0), (0, 0))
    stride_one = ConvGeometry((3, 3), (1, 1), pads, (1, 1))
    stride_two = ConvGeometry((3, 3), (2, 1), pads, (1, 1))
    assert _conv_ops._layout_for(stride_one) is _conv_ops._ShiftedLayout
    assert _conv_ops._layout_for(stride_two) is _conv_ops._StridedLayout


def test_float32_in_float32_out(rng):
    geometry, groups, x, weight, bias, dy = _problem(CASES[3], rng)
    args = [a.astype(np.float32) for a in (x, weight, bias, dy)]
    for result in _all_three(geometry, groups, *args, Workspace(3000)):
        assert result.dtype == np.float32


def test_transpose_rejects_dy_of_the_wrong_shape(rng):
    geometry = _geometry((3, 3), (1, 1), 0, (1, 1))
    with pytest.raises(ValueError, match="not the output of a convolution"):
        conv_transpose(np.zeros((1, 2, 5, 5)), np.zeros((2, 1, 3, 3)), geometry, (8, 8))


def test_kernel_larger_than_the_input_is_a_clear_error():
    geometry = _geometry((5, 5), (1, 1), 0, (1, 1))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv_forward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 5, 5)), None, geometry)


# -- the workspace ------------------------------------------------------------------------
def test_workspace_stays_bounded_and_is_reused(rng):
    geometry, groups, x, weight, bias, dy = _problem(CASES[3], rng, batch=16)
    workspace = Workspace(20_000)
    _all_three(geometry, groups, x, weight, bias, dy, workspace)
    held = workspace.nbytes
    assert 0 < held <= 3 * workspace.limit_bytes  # patches, maps, slab
    (scratch,) = workspace._sets
    buffers = dict(scratch._buffers)
    _all_three(geometry, groups, x, weight, bias, dy, workspace)
    assert workspace.nbytes == held and workspace._sets == [scratch]
    assert all(scratch._buffers[role] is buffer for role, buffer in buffers.items())
    workspace.release()
    assert workspace.nbytes == 0


def test_concurrent_calls_get_their_own_scratch_and_new_threads_reuse_it(rng):
    geometry, groups, x, weight, bias, dy = _problem(CASES[2], rng)
    workspace = Workspace(5000)
    expected = conv_forward(x, weight, bias, geometry, workspace=Workspace(2**30))
    both_inside = threading.Barrier(2)
    results = [None, None]

    def run(slot):
        with workspace.claim():  # hold one set while the other thread computes
            both_inside.wait()
            results[slot] = conv_forward(x, weight, bias, geometry, workspace=workspace)

    for _ in range(3):  # new threads every round, as a thread pool per call makes them
        threads = [threading.Thread(target=run, args=(slot,)) for slot in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)
    # at most 4 claims are open at once; 12 were made by 6 threads that no longer exist
    assert 3 <= len(workspace._sets) <= 4
    for clone in (copy.deepcopy(workspace), pickle.loads(pickle.dumps(workspace))):
        assert clone.nbytes == 0 and clone.limit_bytes == workspace.limit_bytes


def test_workspace_rejects_a_non_positive_limit():
    with pytest.raises(ValueError, match="limit_bytes"):
        Workspace(0)


def test_steady_state_training_step_allocates_only_its_outputs(rng):
    """After the first step the patch matrices live in the reused workspace: a step's new
    allocations are y, dx and the small weight gradients, not the K-times-larger patches."""
    layer = Conv2d(16, 16, 3, padding=1, rng=rng)
    x = rng.standard_normal((32, 16, 24, 24)).astype(np.float32)
    dy = np.ones((32, 16, 24, 24), dtype=np.float32)
    layer.forward(x)  # the first step sizes the workspace
    layer.backward(dy)
    tracemalloc.start()
    try:
        layer.forward(x)
        layer.backward(dy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    patch_matrix = 16 * 9 * x[:, 0].size * x.itemsize  # what a one-shot im2col would take
    assert peak < 3.2 * x.nbytes  # y, dx (and a dy-sized reduction temporary at most)
    assert peak < patch_matrix / 2


def test_weight_grad_reuses_the_forward_patches_of_the_same_input_only(rng, monkeypatch):
    geometry, groups, x, weight, bias, dy = _problem(CASES[2], rng)
    expected = conv_weight_grad(x, dy, geometry, workspace=Workspace(2**30))
    gathers = []
    original = _conv_ops._StridedLayout._gather
    monkeypatch.setattr(
        _conv_ops._StridedLayout,
        "_gather",
        lambda self, x, scratch: gathers.append(1) or original(self, x, scratch),
    )
    workspace = Workspace(2**30)
    conv_forward(x, weight, bias, geometry, workspace=workspace)
    assert len(gathers) == 1
    reused = conv_weight_grad(x, dy, geometry, workspace=workspace)
    assert len(gathers) == 1  # one block: the forward's patch matrix is still there
    np.testing.assert_array_equal(reused, expected)
    other = x.copy()  # equal values, another array: gathered again
    conv_weight_grad(other, dy, geometry, workspace=workspace)
    assert len(gathers) == 2
    conv_transpose(dy, weight, geometry, x.shape[2:], workspace=workspace)  # reuses the buffer
    conv_weight_grad(other, dy, geometry, workspace=workspace)
    assert len(gathers) == 3


def _poison(workspace):
    """Fill every scratch buffer with NaN bytes: a result that reads a cell it did not
    write (an unused column, a padding cell, a skipped input cell) turns NaN."""
    for scratch in workspace._sets:
        for buffer in scratch._buffers.values():
            buffer.fill(0xFF)


@pytest.mark.parametrize(
    "case",
    [*CASES, ((9, 10), (2, 2), (3, 3), 0, (1, 1), 1), ((9, 10), (3, 2), (1, 1), (2, 0), (1, 1), 1)],
)
def test_reused_buffers_are_never_read_before_written(case, rng):
    """Buffers are not zero-filled where they are overwritten (δ's unused columns, the
    slab's padding, dx when every input cell is reached): results from buffers full of NaN
    left by other calls equal fresh ones; stride 3 over a kernel of 2 skips input cells,
    whose gradient is zero."""
    geometry, groups, x, weight, bias, dy = _problem(case, rng)
    expected = _all_three(geometry, groups, x, weight, bias, dy, Workspace(2**30))
    for limit in (2**30, 600):
        workspace = Workspace(limit)
        _all_three(geometry, groups, x, weight, bias, dy, workspace)
        _poison(workspace)
        got = _all_three(geometry, groups, x, weight, bias, dy, workspace)
        for name, g, e in zip(("output", "weight grad", "input grad"), got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=f"{name} {limit}")


def test_the_plan_is_made_once_per_shape_and_replaced_by_the_next(rng):
    geometry, groups, x, weight, bias, dy = _problem(CASES[3], rng)
    workspace = Workspace(5000)
    plan = workspace.plan(x.shape, weight.shape[0], geometry, x.dtype)
    _all_three(geometry, groups, x, weight, bias, dy, workspace)
    assert workspace.plan(x.shape, weight.shape[0], geometry, x.dtype) is plan
    # another batch size: a new plan replaces the old one (one entry, not a growing cache)
    small = x[:2]
    expected = conv_forward(small, weight, bias, geometry, groups=groups, workspace=Workspace())
    got = conv_forward(small, weight, bias, geometry, groups=groups, workspace=workspace)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert workspace._plan[1] is not plan and workspace._plan[0][0] == small.shape
    assert copy.deepcopy(workspace)._plan is None


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("columns", [1, 7])
def test_weight_grad_in_runs_of_columns_equals_one_product(case, columns, rng, monkeypatch):
    """The weight gradient's product taken in runs of PRODUCT_COLUMNS columns (here 1,
    and 7: runs as even as the width allows) equals the one-product result at 1e-12."""
    geometry, groups, x, weight, bias, dy = _problem(case, rng)
    expected = conv_weight_grad(x, dy, geometry, groups=groups, workspace=Workspace(2**30))
    monkeypatch.setattr(_conv_ops, "PRODUCT_COLUMNS", columns)
    for limit in (2**30, 600):
        got = conv_weight_grad(x, dy, geometry, groups=groups, workspace=Workspace(limit))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, err_msg=str(limit))


@pytest.mark.parametrize("case", CASES)
def test_weight_grad_by_matrix_vector_products_equals_one_matrix_product(case, rng, monkeypatch):
    """The weight gradient's products taken per output map (GEMV_PRODUCT_CELLS above
    every product here) equal the matrix products (none so taken) at 1e-12."""
    geometry, groups, x, weight, bias, dy = _problem(case, rng)
    results = []
    for cells in (0, 10**9):
        monkeypatch.setattr(_conv_ops, "GEMV_PRODUCT_CELLS", cells)
        for limit in (2**30, 600):
            workspace = Workspace(limit)
            results.append(conv_weight_grad(x, dy, geometry, groups=groups, workspace=workspace))
    for got in results[1:]:
        np.testing.assert_allclose(got, results[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("part_bytes", [_conv_ops.PART_BYTES, 1])  # one part; one per sample
def test_weight_grad_follows_its_input_not_the_last_forward(part_bytes, rng, monkeypatch):
    """A forward of another input (same shape) between a forward and the weight gradient
    leaves that input's patches in the workspace: the weight gradient of the first input
    gathers its own again, equal to a fresh workspace's."""
    monkeypatch.setattr(_conv_ops, "PART_BYTES", part_bytes)
    geometry, groups, x, weight, bias, dy = _problem(CASES[3], rng)
    other = rng.standard_normal(x.shape)
    expected = conv_weight_grad(x, dy, geometry, groups=groups, workspace=Workspace())
    workspace = Workspace()
    conv_forward(x, weight, bias, geometry, groups=groups, workspace=workspace)
    conv_forward(other, weight, bias, geometry, groups=groups, workspace=workspace)
    got = conv_weight_grad(x, dy, geometry, groups=groups, workspace=workspace)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [case for case in CASES if set(case[2]) == {1}])
@pytest.mark.parametrize("skew", ["one_sample_of_one_map", "two_maps"])
def test_input_grad_in_chunks_of_skewed_rows_equals_one_chunk(case, skew, rng, monkeypatch):
    """The stride-1 input gradient sums its shifted row blocks in chunks of SKEW_BYTES
    (here one sample of one map, or two maps of the whole part): equal to one chunk at 1e-12,
    and the skewed rows never exceed the chunk (``skewed_bytes``)."""
    geometry, groups, x, weight, _, dy = _problem(case, rng)
    expected = conv_transpose(dy, weight, geometry, x.shape[2:], groups=groups)
    (block,) = _conv_ops._blocks(x.shape, weight.shape[0], geometry, 2**30, x.dtype)
    one = block.taps * block.flat_size * x.itemsize  # one sample of one map
    monkeypatch.setattr(
        _conv_ops, "SKEW_BYTES", 1 if skew == "one_sample_of_one_map" else 2 * len(x) * one
    )
    workspace = Workspace(2**30)
    got = conv_transpose(dy, weight, geometry, x.shape[2:], groups=groups, workspace=workspace)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    (scratch,) = workspace._sets
    padded = tuple(s + b + a for s, (b, a) in zip(x.shape[2:], geometry.pads))
    bound = _conv_ops.skewed_bytes(len(x), x.shape[1], padded, geometry, x.itemsize)
    assert (
        scratch._buffers["skewed"].nbytes
        == bound
        == (one if skew == "one_sample_of_one_map" else 2 * len(x) * one)
    )


def test_scratch_hands_out_a_roles_recent_shapes_again_from_its_one_buffer():
    """A forward and a backward asking one role for two shapes, step after step, get the
    same arrays back (no new views); all lie in the role's one buffer, and once it grows
    no array of the old buffer is handed out."""
    scratch = _conv_ops.Scratch()
    f32 = np.dtype(np.float32)
    forward, backward = scratch.array("maps", (6, 672), f32), scratch.array("maps", (6, 1, 8), f32)
    for _ in range(2):
        assert scratch.array("maps", (6, 672), f32) is forward
        assert scratch.array("maps", (6, 1, 8), f32) is backward
    assert np.shares_memory(forward, backward)
    assert scratch.array("maps", (6, 672), np.float64) is not forward  # the dtype counts
    grown = scratch.array("maps", (6, 2000), f32)  # a new, larger buffer
    assert scratch.nbytes == grown.nbytes
    assert np.shares_memory(scratch.array("maps", (6, 672), f32), grown)
    assert np.shares_memory(scratch.array("maps", (6, 1, 8), f32), grown)


def test_conv_geometry_output_shape_kept_for_the_last_shape_is_not_part_of_its_value():
    """The last answer is kept per geometry (any shape, then another, then the first again
    gives PyTorch's sizes) and leaves equality, hashing and the repr alone."""
    geometry = ConvGeometry((5, 3), (1, 2), ((2, 2), (0, 1)), (1, 1))
    twin = ConvGeometry((5, 3), (1, 2), ((2, 2), (0, 1)), (1, 1))
    for spatial, expected in [((28, 28), (28, 14)), ((4, 3), (4, 1)), ((28, 28), (28, 14))]:
        assert geometry.output_shape(spatial) == expected
        assert geometry.output_shape(list(spatial)) == expected
    assert geometry == twin and hash(geometry) == hash(twin) and repr(geometry) == repr(twin)
    assert pickle.loads(pickle.dumps(geometry)).output_shape((5, 5)) == (5, 2)
