"""Sliding windows over the spatial axes of (N, C, *spatial) arrays, and their adjoints.

Pooling (SPEC §3) is written with these primitives, each one contract and one
implementation, for any number of spatial dimensions (1-D, 2-D, 3-D):

* ``windows(x_padded, kernel, stride, dilation, out)`` -> W(x), a *view* of shape
  (N, C, *out, *kernel): element [n, c, o..., k...] is x_pad(o·s + k·d). No data is copied.
* ``scatter_windows(dwindows, ...)`` -> Wᵀ, the adjoint: every window gradient is added back
  to the input cell it came from (⟨Wᵀ(dw), x⟩ = ⟨dw, W(x)⟩); ``spread_windows(dv, ...)`` is
  Wᵀ of one value per window on all its cells, SPEC §5's up(dv) when the windows tile x.
* ``sum_windows`` (Σ_k w_k W(x)[..., k]: SPEC §5's block sum) and ``max_over_windows``
  (max_k W(x)[..., k] and the winning k).
* ``window_cells`` describes windows as tables, cells[a][o, k] = the coordinate along axis a
  of cell k of window o; ``gather_windows`` reads windows given by such tables (adaptive
  pooling's bins) and ``scatter_max`` is the max-pool backward for any such windows: dy(o)
  goes to the cell that won window o. ``scatter_max_windows`` is the same for sliding
  windows given by their geometry (no tables per call); both share one per-offset scatter.
* ``upsample(z, n)`` = z ⊗ 1_n, the Kronecker upsampling of SPEC §5.

Every scatter loops over the kernel offsets k only, never over samples, maps or pixels: for
each k, the cells that k reads in all windows form one strided slice of the input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

Pads = tuple[tuple[int, int], ...]
# Windows as tables, one per spatial axis a: cells[a][o, k] is the input coordinate along
# axis a of cell k of window o.
Cells = tuple[np.ndarray, ...]


def output_size(
    size: int,
    kernel_size: int,
    stride: int,
    pad_before: int,
    pad_after: int,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length along one axis: PyTorch's ``Shape:`` formula.

    out = floor_or_ceil((size + pad_before + pad_after - dilation*(kernel-1) - 1) / stride) + 1;
    with ceil_mode the last window must still start inside the input or its left padding
    (the smaller last window of overlapping pooling, SPEC §3).
    """
    span = size + pad_before + pad_after - dilation * (kernel_size - 1) - 1
    if span < 0:
        return 0
    rounding = math.ceil if ceil_mode else math.floor
    out = rounding(span / stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_before:
        out -= 1
    return out


def resolve_padding(
    padding: int | str | Sequence[int],
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Pads:
    """(before, after) zero padding per spatial axis for an int, a tuple or a mode string.

    "valid": none. "full": dilation*(k-1) on both sides (every partial overlap, MATLAB's
    conv2 'full'). "same": total dilation*(k-1), the odd pixel after (PyTorch's rule),
    meant for stride 1.
    """
    nd = len(kernel_size)
    extents = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    if isinstance(padding, str):
        if padding == "valid":
            return tuple((0, 0) for _ in range(nd))
        if padding == "full":
            return tuple((e, e) for e in extents)
        if padding == "same":
            return tuple((e // 2, e - e // 2) for e in extents)
        raise ValueError(
            f"padding must be an int, a tuple, 'valid', 'same' or 'full', got {padding!r}"
        )
    if isinstance(padding, (int, np.integer)):
        values = (int(padding),) * nd
    else:
        values = tuple(int(p) for p in padding)
        if len(values) != nd:
            raise ValueError(f"padding must be an int or {nd} ints, got {padding!r}")
    if any(p < 0 for p in values):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return tuple((p, p) for p in values)


def pad_spatial(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """Pad the trailing len(pads) axes; returns x itself when there is nothing to pad."""
    if not any(before or after for before, after in pads):
        return x
    width = ((0, 0),) * (x.ndim - len(pads)) + tuple(pads)
    return np.pad(x, width, mode="constant", constant_values=value)


# PyTorch's Conv padding_mode -> np.pad's mode (SPEC §2: the border cells a kernel sees).
PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def check_padding_fits(pads: Pads, spatial: tuple[int, ...], padding_mode: str) -> None:
    """PyTorch's limits: a reflection needs pad < size, a wrap pad <= size per axis."""
    limit = {"reflect": 0, "circular": 1}.get(padding_mode)
    if limit is None:
        return
    for axis, ((before, after), size) in enumerate(zip(pads, spatial)):
        if max(before, after) >= size + limit:
            relation = "smaller than" if limit == 0 else "at most"
            raise ValueError(
                f"padding_mode={padding_mode!r}: padding {(before, after)} of spatial axis "
                f"{axis} must be {relation} its size {size} (input spatial shape {spatial})"
            )


def pad_spatial_mode(x: np.ndarray, pads: Pads, padding_mode: str) -> np.ndarray:
    """x̃ = pad(x): the trailing len(pads) axes padded as PyTorch's ``padding_mode`` does
    (zeros, reflect without repeating the edge, replicate the edge, circular wrap)."""
    if padding_mode == "zeros":
        return pad_spatial(x, pads)
    width = ((0, 0),) * (x.ndim - len(pads)) + tuple(pads)
    return np.pad(x, width, mode=PADDING_MODES[padding_mode])


def fold_padding(dx_padded: np.ndarray, pads: Pads, padding_mode: str) -> np.ndarray:
    """The adjoint of ``pad_spatial_mode``: the gradient on x̃ folded back onto x,

        ∂E/∂x(i) = Σ_{p : s(p) = i} ∂E/∂x̃(p)

    where s(p) is the cell of x that padded cell p copies (s(p) = p − before inside x).
    Padding is separable, so the fold is done one axis at a time; along an axis of size n
    with (b, a) padding, the b head cells g[:b] and a tail cells g[b+n:] add into
        zeros:      nothing (they are constants)
        replicate:  x(0) and x(n−1)                  (s = 0, resp. n−1)
        reflect:    x(b), …, x(1) and x(n−2), …, x(n−1−a)   (mirror without the edge)
        circular:   x(n−b), …, x(n−1) and x(0), …, x(a−1)   (wrap)
    """
    if not any(before or after for before, after in pads):
        return dx_padded
    nd = len(pads)
    grad = dx_padded
    for axis, (before, after) in enumerate(pads, start=dx_padded.ndim - nd):
        g = np.moveaxis(grad, axis, 0)
        size = g.shape[0] - before - after
        folded = g[before : before + size].copy()
        head, tail = g[:before], g[before + size :]
        if padding_mode == "replicate":
            folded[0] += head.sum(axis=0)
            folded[-1] += tail.sum(axis=0)
        elif padding_mode == "reflect":
            folded[1 : before + 1] += head[::-1]
            folded[size - 1 - after : size - 1] += tail[::-1]
        elif padding_mode == "circular":
            folded[size - before :] += head
            folded[:after] += tail
        grad = np.moveaxis(folded, 0, axis)
    return np.ascontiguousarray(grad)


def windows(
    x_padded: np.ndarray,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> np.ndarray:
    """View of shape (N, C, *out_shape, *kernel_size) over an already padded input.

    Output axis a steps by stride_a input cells, kernel axis a by dilation_a cells; built
    directly from strides (``sliding_window_view`` plus slicing costs 4x the Python time,
    which shows in small-batch inference): on a C-contiguous input as an ndarray on its
    buffer (2 us), otherwise (its buffer is not exported) by ``as_strided`` (9 us).
    """
    nd = len(kernel_size)
    lead, spatial_strides = x_padded.strides[:-nd], x_padded.strides[-nd:]
    shape = (*x_padded.shape[:-nd], *out_shape, *kernel_size)
    strides = (
        *lead,
        *(step * s for step, s in zip(spatial_strides, stride)),
        *(step * d for step, d in zip(spatial_strides, dilation)),
    )
    if not x_padded.flags.c_contiguous:
        return np.lib.stride_tricks.as_strided(x_padded, shape, strides, writeable=False)
    view = np.ndarray(shape, x_padded.dtype, x_padded, strides=strides)
    view.flags.writeable = False  # windows overlap or skip cells: no writes through them
    return view


def kernel_offsets(
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    out_shape: tuple[int, ...],
):
    """Yield (offset, slices) for every kernel offset k: ``x_padded[..., *slices]`` is the
    strided sub-image that offset k meets at every output position (o·s + k·d)."""
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        slices = tuple(
            slice(i * d, i * d + s * (o - 1) + 1, s)
            for i, d, s, o in zip(offset, dilation, stride, out_shape)
        )
        yield offset, slices


def scatter_windows(
    dwindows: np.ndarray,
    padded_shape: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> np.ndarray:
    """Wᵀ, the adjoint of ``windows``: sum window gradients (N, C, *out, *k) into an array of
    the padded input's shape (a cell in several windows receives the sum of their parts)."""
    nd = len(stride)
    kernel_size, out_shape = dwindows.shape[-nd:], dwindows.shape[-2 * nd : -nd]
    disjoint, tiles = _window_layout(kernel_size, stride, dilation, out_shape, padded_shape)
    dx_padded = _gradient_array(padded_shape, dwindows.dtype, tiles)
    for offset, slices in kernel_offsets(kernel_size, stride, dilation, out_shape):
        cell = (Ellipsis, *slices)
        if disjoint:  # each cell is in one window at most: a copy, not a read-add-write
            dx_padded[cell] = dwindows[(Ellipsis, *offset)]
        else:
            dx_padded[cell] += dwindows[(Ellipsis, *offset)]
    return dx_padded


def _window_layout(
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    out_shape: tuple[int, ...],
    padded_shape: tuple[int, ...],
) -> tuple[bool, bool]:
    """(disjoint, tiles) for ``windows``' sliding windows, from their geometry (not tables:
    this runs on every backward of a pool). Windows no longer than their stride share no
    cell; disjoint windows that are as many cells as the axis is long tile the input, and
    are then blocks of k consecutive cells (stride = kernel, no dilation)."""
    nd = len(kernel_size)
    disjoint = all(d * (k - 1) + 1 <= s for k, s, d in zip(kernel_size, stride, dilation))
    tiles = disjoint and all(
        o * k == size for o, k, size in zip(out_shape, kernel_size, padded_shape[-nd:])
    )
    return disjoint, tiles


def window_cells(
    out_shape: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Cells:
    """The cells of ``windows``' sliding windows as tables: cells[a][o, k] = o·s_a + k·d_a."""
    return tuple(
        np.arange(o)[:, None] * s + np.arange(k) * d
        for o, k, s, d in zip(out_shape, kernel_size, stride, dilation)
    )


def gather_windows(x: np.ndarray, cells: Cells) -> np.ndarray:
    """The windows given by ``cells`` as an (N, C, *out, *k) copy: [..., o, k] = x(cells(o, k))."""
    nd = len(cells)
    index = []
    for axis, table in enumerate(cells):
        shape = [1] * (2 * nd)
        shape[axis], shape[nd + axis] = table.shape  # (…, out_a, …, k_a, …)
        index.append(table.reshape(shape))
    return x[(Ellipsis, *index)]


def _disjoint(cells: Cells) -> bool:
    """True when no input cell is in two windows (or twice in one): along every axis the
    table's coordinates are all different (counted, not sorted: this runs every call)."""
    return all(np.bincount(table.ravel()).max(initial=0) <= 1 for table in cells)


def _tiles(cells: Cells, shape: tuple[int, ...]) -> bool:
    """For disjoint windows: True when they also cover every cell of ``shape``'s spatial
    axes (distinct coordinates, as many as the axis is long)."""
    return all(table.size == size for table, size in zip(cells, shape[-len(cells) :]))


def _gradient_array(shape: tuple[int, ...], dtype: Any, every_cell_written: bool) -> np.ndarray:
    """The array a scatter writes ∂E/∂x into: zeros, unless the scatter is about to write
    every cell (windows that tile the input), when clearing it first is a wasted pass."""
    return (np.empty if every_cell_written else np.zeros)(shape, dtype=dtype)


def _offset_slices(per_axis: list[list[slice]]) -> Iterator[tuple[int, tuple]]:
    """(flat k, index) for every kernel offset k in row-major order, given each axis'
    ``_axis_slices``: ``x[index]`` is the strided view holding, for every window o, the
    cell that offset k of o reads."""
    for flat, slices in enumerate(itertools.product(*per_axis)):
        yield flat, (Ellipsis, *slices)


def _axis_slices(table: np.ndarray) -> list[slice] | None:
    """For every column k of one axis' table, the slice that reads its coordinates, when
    every column is evenly increasing; else None. Checked for all columns at once (a few
    array operations per axis: pooling calls this on every backward)."""
    first = table[0]
    step = table[1] - first if len(table) > 1 else np.ones_like(first)
    if (step < 1).any() or (table[1:] - table[:-1] != step).any():
        return None
    return [
        slice(start, last + 1, by)
        for start, last, by in zip(first.tolist(), table[-1].tolist(), step.tolist())
    ]


def upsample(z: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """z ⊗ 1_{n_1×…×n_d} over the trailing len(factors) axes: every value repeated n_a times
    along axis a (SPEC §5: Kronecker product / repeat, never image resizing).

    The last axis first: repeating single values is the slow part, so it is done while the
    array is smallest; the leading axes then repeat whole rows (measured, 1 thread:
    32x6x14x14 float32 up 2x2 in 0.059 ms against 0.100 ms first axis first)."""
    first = z.ndim - len(factors)
    for axis, n in reversed(list(enumerate(factors, start=first))):
        z = z.repeat(n, axis=axis)
    return z


def crop_spatial(x_padded: np.ndarray, pads: Pads, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Undo ``pad_spatial`` (also drops any extra right padding added for ceil_mode)."""
    index = tuple(slice(before, before + size) for (before, _), size in zip(pads, spatial_shape))
    return x_padded[(Ellipsis, *index)]


def sum_windows(patches: np.ndarray, nd: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Σ_k w_k · patches[..., k] over the nd kernel axes of a ``windows`` view (w = 1 if None).

    Loops over the K kernel offsets; each ``patches[..., k]`` is a strided view of the input,
    so with stride == kernel this is SPEC §5's block sum (convolve with ones, keep every n-th
    value). NumPy adds K strided images 5-15x faster than it reduces the window view or a
    (..., H/n, n, W/n, n) reshape (measured: 0.45 ms vs 6.5 ms for 64x16x28x28, n = 2).
    Without weights the sum runs one kernel axis at a time, Σ_k1 (Σ_k2 ...): k1 + k2 − 2
    additions instead of k1·k2 − 1, and the first pass reads whole input rows (measured, 1
    thread, 2x2 tiling of 32x6x28x28 float32: 83 -> 54 us).
    """
    if weights is None:  # a box sum is separable: one kernel axis at a time, first axis first
        total = patches
        for remaining in range(nd, 0, -1):  # kernel axes left; sum over the first of them
            inner = (slice(None),) * (remaining - 1)
            cells = [total[(Ellipsis, j, *inner)] for j in range(total.shape[-remaining])]
            if len(cells) > 1:  # the first two cells in one pass (no copy, no zeros pass)
                total = np.add(cells[0], cells[1])
                for cell in cells[2:]:
                    total += cell
            else:
                total = cells[0]
        return total if total.base is None else total.copy()  # a new array, never a view
    offsets = list(itertools.product(*(range(k) for k in patches.shape[-nd:])))
    cells = [patches[(Ellipsis, *offset)] for offset in offsets]  # views, no copies
    total = weights[offsets[0]] * cells[0]
    for offset, cell in zip(offsets[1:], cells[1:]):
        total += weights[offset] * cell
    return total


def spread_windows(
    dvalues: np.ndarray,
    padded_shape: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> np.ndarray:
    """Wᵀ(dv ⊗ 1_k): each window's value dv(o), (N, C, *out), sent to every cell of window o
    (summed where windows overlap): the adjoint of the unweighted ``sum_windows``.

    Windows that tile the input (stride = kernel, no dilation, out·kernel = size) make this
    SPEC §5's up(dv) = dv ⊗ 1_k, which ``upsample`` builds in one pass per axis without the
    zeros and per-offset scatter of the general case (measured, 1 thread: 32x6x28x28 float32,
    2x2: 0.075 -> 0.060 ms, and less Python per call).
    """
    nd = len(kernel_size)
    out_shape = dvalues.shape[-nd:]
    if _window_layout(kernel_size, stride, dilation, out_shape, padded_shape)[1]:
        return upsample(dvalues, kernel_size)
    expanded = dvalues.reshape(dvalues.shape + (1,) * nd)
    dwindows = np.broadcast_to(expanded, dvalues.shape + tuple(kernel_size))
    return scatter_windows(dwindows, padded_shape, stride, dilation)


def max_over_windows(
    patches: np.ndarray, nd: int, with_argmax: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Max over the trailing nd (kernel) axes of (N, C, *out, *k), and the winner's flat index
    (None when ``with_argmax`` is False: inference needs only the max).

    A running max over the K kernel offsets: a later cell takes over only if strictly greater,
    so ties go to the first cell in row-major window order, as in PyTorch's CPU kernels. The
    argmax is stored in the smallest unsigned type that holds K − 1 (uint8 for any usual
    kernel): it is the one array max pooling keeps for backward.

    With the argmax, each cell is read twice (compare, then max), so it is first copied out
    of its strided view into one contiguous scratch plane (y's size): NumPy's loops over
    strided views are 5-8x slower than over contiguous ones, and the copy costs about one
    of them (measured, 1 thread: 2x2 stride-2 pooling of 64x32x28x28 float32, 1.65 -> 1.16
    ms; 3x3 stride 1, 9.6 -> 7.2 ms).
    """
    kernel_size = patches.shape[-nd:]
    offsets = itertools.product(*(range(k) for k in kernel_size))
    y = patches[(Ellipsis, *next(offsets))].copy()
    if not with_argmax:
        for offset in offsets:  # each cell read once: straight from its view
            np.maximum(y, patches[(Ellipsis, *offset)], out=y)
        return y, None
    argmax = np.zeros(y.shape, dtype=np.min_scalar_type(math.prod(kernel_size) - 1))
    wins = np.empty(y.shape, dtype=bool)
    candidate = np.empty_like(argmax)
    cell = np.empty_like(y)
    for index, offset in enumerate(offsets, start=1):
        np.copyto(cell, patches[(Ellipsis, *offset)])
        np.greater(cell, y, out=wins)
        # A win sets argmax to index, which exceeds every earlier index, so "argmax = index
        # where wins" is max(argmax, wins·index): branch-free, 5x faster than np.where/copyto.
        np.multiply(wins, argmax.dtype.type(index), out=candidate)
        np.maximum(argmax, candidate, out=argmax)
        np.maximum(y, cell, out=y)
    return y, argmax


def scatter_max(
    dy: np.ndarray, argmax: np.ndarray, cells: Cells, shape: tuple[int, ...]
) -> np.ndarray:
    """∂E/∂x of y(o) = max over window o: ∂E/∂x(i) = Σ_{o: cell i won window o} dy(o).

    ``argmax`` holds each window's winning offset as a flat (row-major) k, as
    ``max_over_windows`` returns it; ``cells`` the windows' tables; ``shape`` x's shape.
    Sliding windows (evenly spaced cells): one vectorised pass per kernel offset k, the
    windows that k won sending their dy to the strided slice k reads, written in place
    where windows share no cell. Other windows (adaptive bins): the winners' flat input
    indices are built once and summed with ``np.add.at``. Measured on 2 busy cores: 2x2
    stride-2 pooling of 128x32x28x28, 14-20 ms per offset against 38-41 ms through flat
    indices; adaptive 28 -> 5 bins of 64x16 maps, 1.1 ms through flat indices against 41 ms
    per offset.
    """
    per_axis = [_axis_slices(table) for table in cells]
    if any(slices is None for slices in per_axis):
        return _scatter_to_winners(dy, argmax, cells, shape)
    disjoint = _disjoint(cells)
    tiles = disjoint and _tiles(cells, shape)
    return _scatter_per_offset(dy, argmax, _offset_slices(per_axis), shape, disjoint, tiles)


def scatter_max_windows(
    dy: np.ndarray,
    argmax: np.ndarray,
    padded_shape: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> np.ndarray:
    """``scatter_max`` for the sliding windows of ``windows``, read from their geometry: no
    tables to build and check on every backward (max pooling's Python time per backward,
    measured, 1x1x2x2 input: 42 -> 19 us)."""
    out_shape = dy.shape[-len(kernel_size) :]
    disjoint, tiles = _window_layout(kernel_size, stride, dilation, out_shape, padded_shape)
    offsets = (
        (flat, (Ellipsis, *slices))
        for flat, (_, slices) in enumerate(kernel_offsets(kernel_size, stride, dilation, out_shape))
    )
    return _scatter_per_offset(dy, argmax, offsets, padded_shape, disjoint, tiles)


def _scatter_per_offset(
    dy: np.ndarray,
    argmax: np.ndarray,
    offset_cells: Iterator[tuple[int, tuple]],
    shape: tuple[int, ...],
    disjoint: bool,
    tiles: bool,
) -> np.ndarray:
    """The max scatter of evenly spaced windows: for each (flat k, index of the strided
    slice k reads), the windows that k won send dy there; a copy where windows share no
    cell, an add where they do."""
    dx = _gradient_array(shape, dy.dtype, tiles)
    for flat, cell in offset_cells:
        if disjoint:
            np.multiply(dy, argmax == flat, out=dx[cell])
        else:
            dx[cell] += dy * (argmax == flat)
    return dx


def _scatter_to_winners(
    dy: np.ndarray, argmax: np.ndarray, cells: Cells, shape: tuple[int, ...]
) -> np.ndarray:
    """``scatter_max`` through flat indices: the winner of window o is cell
    (cells[0][o_0, k_0], cells[1][o_1, k_1], ...) with k = unravel(argmax(o))."""
    nd = len(cells)
    winning = np.unravel_index(argmax, tuple(table.shape[1] for table in cells))
    flat = np.arange(shape[0] * shape[1]).reshape((shape[0], shape[1]) + (1,) * nd)
    for axis, (table, k) in enumerate(zip(cells, winning)):
        window = np.arange(table.shape[0]).reshape((-1,) + (1,) * (nd - 1 - axis))
        flat = flat * shape[2 + axis] + table[window, k]
    dx = np.zeros(math.prod(shape), dtype=dy.dtype)
    np.add.at(dx, flat.ravel(), dy.ravel())  # bins may overlap and share a winner
    return dx.reshape(shape)
