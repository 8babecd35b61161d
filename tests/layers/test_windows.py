"""The pooling primitives of layers/_windows.py: each against its definition written as a
plain loop over windows (fine in a test), adjoint pairs by ⟨Wᵀ(dw), x⟩ = ⟨dw, W(x)⟩ in
float64, and the one max scatter on sliding windows and on adaptive bins."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from convnp.layers import _windows
from convnp.layers.adaptive_pool import _bin_cells

# (input spatial shape, kernel, stride, dilation): disjoint, overlapping, gapped, dilated,
# and windows that tile the input exactly (the scatters then skip clearing dx).
GEOMETRIES = [
    ((8,), (4,), (4,), (1,)),
    ((6, 8), (2, 2), (2, 2), (1, 1)),
    ((9,), (3,), (2,), (1,)),
    ((8,), (2,), (3,), (2,)),
    ((6, 7), (2, 2), (2, 2), (1, 1)),
    ((7, 6), (3, 2), (2, 1), (1, 1)),
    ((8, 7), (2, 2), (1, 1), (2, 3)),
    ((5, 4, 6), (2, 3, 2), (2, 1, 2), (1, 1, 1)),
]


def _out_shape(spatial, kernel, stride, dilation):
    return tuple(
        _windows.output_size(size, k, s, 0, 0, d)
        for size, k, s, d in zip(spatial, kernel, stride, dilation)
    )


def _windows_by_loop(x, cells):
    """W(x)(o, k) = x(cells(o, k)), one window cell at a time."""
    out = tuple(table.shape[0] for table in cells)
    kernel = tuple(table.shape[1] for table in cells)
    result = np.empty(x.shape[:2] + out + kernel, dtype=x.dtype)
    for o in itertools.product(*map(range, out)):
        for k in itertools.product(*map(range, kernel)):
            cell = tuple(table[oa, ka] for table, oa, ka in zip(cells, o, k))
            result[(Ellipsis, *o, *k)] = x[(Ellipsis, *cell)]
    return result


@pytest.mark.parametrize("spatial,kernel,stride,dilation", GEOMETRIES)
def test_windows_are_the_cells_of_window_cells_and_scatter_windows_is_their_adjoint(
    spatial, kernel, stride, dilation, rng
):
    x = rng.standard_normal((2, 3, *spatial))
    out = _out_shape(spatial, kernel, stride, dilation)
    view = _windows.windows(x, kernel, stride, dilation, out)
    cells = _windows.window_cells(out, kernel, stride, dilation)
    np.testing.assert_array_equal(view, _windows_by_loop(x, cells))
    np.testing.assert_array_equal(_windows.gather_windows(x, cells), view)
    assert np.shares_memory(view, x)  # a view, not a copy
    dw = rng.standard_normal(view.shape)
    dx = _windows.scatter_windows(dw, x.shape, stride, dilation)
    assert dx.shape == x.shape
    np.testing.assert_allclose(np.vdot(dx, x), np.vdot(dw, view), rtol=1e-12)


@pytest.mark.parametrize("spatial,kernel,stride,dilation", GEOMETRIES)
def test_windows_of_any_layout_are_read_only_views_with_the_same_cells(
    spatial, kernel, stride, dilation, rng
):
    """C-contiguous inputs get their view from the buffer, others from as_strided: the
    same cells (a cropped, a transposed and a reversed input), never writable."""
    base = rng.standard_normal((3, 2, *(s + 1 for s in spatial)))
    crop = (Ellipsis, *(slice(1, None),) * len(spatial))
    reverse = (Ellipsis, *(slice(None, None, -1),) * len(spatial))
    layouts = [base[crop], base[crop].swapaxes(0, 1), base[crop][reverse], base[crop].copy()]
    out = _out_shape(spatial, kernel, stride, dilation)
    cells = _windows.window_cells(out, kernel, stride, dilation)
    for x in layouts:
        view = _windows.windows(x, kernel, stride, dilation, out)
        np.testing.assert_array_equal(view, _windows_by_loop(x, cells))
        assert np.shares_memory(view, x) and not view.flags.writeable


@pytest.mark.parametrize("spatial,kernel,stride,dilation", GEOMETRIES)
def test_sum_windows_is_the_weighted_sum_over_the_kernel_axes(
    spatial, kernel, stride, dilation, rng
):
    x = rng.standard_normal((2, 3, *spatial))
    view = _windows.windows(
        x, kernel, stride, dilation, _out_shape(spatial, kernel, stride, dilation)
    )
    axes = tuple(range(-len(kernel), 0))
    np.testing.assert_allclose(_windows.sum_windows(view, len(kernel)), view.sum(axis=axes))
    weights = rng.standard_normal(kernel)
    np.testing.assert_allclose(
        _windows.sum_windows(view, len(kernel), weights), (view * weights).sum(axis=axes)
    )


@pytest.mark.parametrize("kernel", [(1, 1), (1, 3), (3, 1)])
def test_sum_windows_with_unit_kernel_axes_returns_a_new_array(kernel, rng):
    x = rng.standard_normal((2, 3, 6, 6))
    out = _out_shape((6, 6), kernel, (1, 1), (1, 1))
    view = _windows.windows(x, kernel, (1, 1), (1, 1), out)
    total = _windows.sum_windows(view, 2)
    np.testing.assert_allclose(total, view.sum(axis=(-2, -1)))
    assert not np.shares_memory(total, x)  # callers divide it in place


@pytest.mark.parametrize("spatial,kernel,stride,dilation", GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spread_windows_is_scatter_windows_of_the_value_on_every_cell(
    spatial, kernel, stride, dilation, dtype, rng
):
    out = _out_shape(spatial, kernel, stride, dilation)
    dv = rng.standard_normal((2, 3, *out)).astype(dtype)
    broadcast = np.broadcast_to(dv.reshape(dv.shape + (1,) * len(kernel)), dv.shape + kernel)
    expected = _windows.scatter_windows(broadcast, (2, 3, *spatial), stride, dilation)
    dx = _windows.spread_windows(dv, (2, 3, *spatial), kernel, stride, dilation)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spatial,kernel,stride", [((7, 6), 3, 2), ((6, 8), 2, 2), ((5, 5), 2, 1)])
def test_max_over_windows_keeps_the_first_maximum_in_the_smallest_index_type(
    spatial, kernel, stride, dtype, rng
):
    x = rng.integers(0, 3, (2, 2, *spatial)).astype(dtype)  # many ties
    out = _out_shape(spatial, (kernel,) * 2, (stride,) * 2, (1, 1))
    view = _windows.windows(x, (kernel,) * 2, (stride,) * 2, (1, 1), out)
    y, argmax = _windows.max_over_windows(view, 2)
    flat = view.reshape(*view.shape[:4], kernel * kernel)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, flat.max(axis=-1))
    np.testing.assert_array_equal(argmax, flat.argmax(axis=-1))  # NumPy: first maximum
    assert argmax.dtype == np.uint8
    y_only, none = _windows.max_over_windows(view, 2, with_argmax=False)
    assert none is None
    np.testing.assert_array_equal(y_only, y)


def _scatter_max_by_loop(dy, argmax, cells, shape):
    """∂E/∂x(i) = Σ_{o: i won window o} dy(o), one window at a time."""
    dx = np.zeros(shape)
    kernel = tuple(table.shape[1] for table in cells)
    for o in itertools.product(*(range(table.shape[0]) for table in cells)):
        for n, c in itertools.product(range(shape[0]), range(shape[1])):
            k = np.unravel_index(argmax[(n, c, *o)], kernel)
            cell = tuple(table[oa, ka] for table, oa, ka in zip(cells, o, k))
            dx[(n, c, *cell)] += dy[(n, c, *o)]
    return dx


def _sliding(spatial, kernel, stride, dilation):
    return _windows.window_cells(
        _out_shape(spatial, kernel, stride, dilation), kernel, stride, dilation
    )


# Windows as tables: sliding (disjoint, overlapping, dilated, 3-D) and adaptive bins (even,
# overlapping by one cell, and more bins than cells, where one offset repeats a cell).
CELLS = {
    "disjoint 2x2": ((6, 8), _sliding((6, 8), (2, 2), (2, 2), (1, 1))),
    "overlapping 3x3 s2": ((7, 6), _sliding((7, 6), (3, 3), (2, 2), (1, 1))),
    "dilated": ((8, 7), _sliding((8, 7), (2, 2), (1, 2), (3, 2))),
    "3-D": ((5, 4, 6), _sliding((5, 4, 6), (2, 3, 2), (2, 1, 2), (1, 1, 1))),
    "bins 8 -> 4": ((8, 6), (_bin_cells(8, 4), _bin_cells(6, 3))),
    "bins 7 -> 3, 6 -> 4": ((7, 6), (_bin_cells(7, 3), _bin_cells(6, 4))),
    "bins 3 -> 5": ((3, 5), (_bin_cells(3, 5), _bin_cells(5, 2))),
}


@pytest.mark.parametrize("name", CELLS)
def test_scatter_max_sends_each_dy_to_its_windows_winner(name, rng):
    spatial, cells = CELLS[name]
    x = rng.permutation(2 * 3 * int(np.prod(spatial))).reshape(2, 3, *spatial).astype(np.float64)
    y, argmax = _windows.max_over_windows(_windows.gather_windows(x, cells), len(spatial))
    dy = rng.standard_normal(y.shape)
    dx = _windows.scatter_max(dy, argmax, cells, x.shape)
    np.testing.assert_allclose(dx, _scatter_max_by_loop(dy, argmax, cells, x.shape), rtol=1e-14)
    # the adjoint of reading each window's winner: ⟨scatter_max(dy), v⟩ = ⟨dy, v(winners)⟩
    v = rng.standard_normal(x.shape)
    winners = np.take_along_axis(
        _windows.gather_windows(v, cells).reshape(*y.shape, -1), argmax[..., None].astype(int), -1
    )[..., 0]
    np.testing.assert_allclose(np.vdot(dx, v), np.vdot(dy, winners), rtol=1e-12)


@pytest.mark.parametrize("spatial,kernel,stride,dilation", GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatter_max_windows_is_scatter_max_on_the_window_tables(
    spatial, kernel, stride, dilation, dtype, rng
):
    x = rng.integers(0, 3, (2, 3, *spatial)).astype(dtype)  # ties
    out = _out_shape(spatial, kernel, stride, dilation)
    y, argmax = _windows.max_over_windows(
        _windows.windows(x, kernel, stride, dilation, out), len(kernel)
    )
    dy = rng.standard_normal(y.shape).astype(dtype)
    cells = _windows.window_cells(out, kernel, stride, dilation)
    dx = _windows.scatter_max_windows(dy, argmax, x.shape, kernel, stride, dilation)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, _windows.scatter_max(dy, argmax, cells, x.shape))


def test_upsample_is_the_kronecker_product_with_ones(rng):
    z = rng.standard_normal((2, 3, 4, 5))
    expected = np.kron(z, np.ones((1, 1, 2, 3)))
    np.testing.assert_array_equal(_windows.upsample(z, (2, 3)), expected)
    np.testing.assert_array_equal(
        _windows.upsample(z, (1, 1, 3)), np.kron(z, np.ones((1, 1, 1, 3)))
    )
    # upsample is the adjoint of the block sum (SPEC §5's down and up)
    x = rng.standard_normal((2, 3, 8, 15))
    blocks = _windows.windows(x, (2, 3), (2, 3), (1, 1), (4, 5))
    np.testing.assert_allclose(
        np.vdot(_windows.upsample(z, (2, 3)), x), np.vdot(z, _windows.sum_windows(blocks, 2))
    )
