"""Convolution as three named primitives (SPEC §2, §5): the maths above, the layout below.

    conv_forward(x, weight, bias, geometry)        y_j = Σ_i x_i ⋆ k_ij + b_j
    conv_weight_grad(x, dy, geometry, ...)         ∂E/∂k_ij = Σ_n Σ_u δ_j(u) · p_i(u)
    conv_transpose(dy, weight, geometry, ...)      ∂E/∂x_i = Σ_j conv(δ_j, rot180(k_ij), 'full')

"⋆" is cross-correlation (PyTorch's convention; a layer with ``flip_kernel`` passes the
rotated kernel), p_i(u) is the patch of x_i that the kernel meets at output position u,
and the weight is laid out (O, C/groups, *k) as in PyTorch: output map j combines the
C/groups input maps of its group. ``conv_transpose`` is the adjoint of ``conv_forward`` in
x: it is the input gradient of a convolution and the forward of a transposed convolution,
whose backward is ``conv_forward`` (input gradient) and ``conv_weight_grad`` with the roles
of x and dy swapped.

Below those names (SPEC §5, "make it fast"): each primitive works on **blocks** of samples
(and, when one sample is too large, of output rows along the first spatial axis). For each
block the patches are gathered into a matrix of shape (C·K, B·L) (im2col: K kernel offsets,
B samples, L output positions), so the forward is one matrix product W(O, C·K) @ cols, the
weight gradient δ @ colsᵀ summed over blocks, and the input gradient scatters Wᵀ @ δ back
to the pixels (col2im). The block is chosen so that
these matrices stay under ``Workspace.limit_bytes``, and they live in a ``Workspace`` that
the caller owns and that is reused from call to call: peak memory is the activations plus a
constant, and a training step allocates no large temporaries. The blocks of an input shape
are worked out once and kept by the workspace (``Workspace.plan``, one shape at a time).

Within a block, all three primitives go **a part at a time**: parts of about
``PART_BYTES`` of patch and output matrix (a core's L2 cache, about), each gathered (or,
for the input gradient, scattered) through the same scratch buffers while still in the
cache. Whole 8 MiB blocks made small networks' inference slower than 06cb8bd's freshly
allocated patch matrices (bouvrie's first conv, batch 64: 1.2 against 0.6 ms): every
layer's workspace is memory of its own that the other layers' work has pushed out of the
cache, so each block was written to and read back from main memory. With parts the forward
takes 0.65-0.8x 06cb8bd's CPU time. The gradients, once whole blocks, go by parts too:
training with one BLAS thread (MPI ranks), the weight gradient regathering its patches a
part at a time beats gathering the whole block again, and beats keeping the forward's whole
patch matrix (written out of the cache in the forward: no faster than the regather); the
input gradient by parts beats whole blocks (modern, batch 64, a training step 45.4 ->
43.8 ms with the weight gradient by parts, -> 42.5 with both), and a training step's
workspaces shrink to parts (modern: 16.7 -> 4.6 MiB). With several BLAS threads each
part's product wakes them: modern at batch 128, 2 threads, is 4% slower than with
whole-block gradients, bouvrie and lenet5 within noise. A block of one part keeps its patch
matrix for the weight gradient of the same x (bouvrie's two convolutions at batch 25).
The forward's and the weight gradient's products go in runs of at most ``PRODUCT_COLUMNS``
columns (few-row matrices are 2-3x faster per column so). Scratch cells that a call
overwrites are not zero-filled first (tested by filling the buffers with NaN).

Three gather layouts (same results, tested equal), each a strided *view* of the block's
padded input copied into the patch matrix in one call (no loop over offsets): for stride 1,
``_ShiftedLayout`` lays each padded (map, sample) image out flat, so kernel offset k meets
the flat image shifted by one number, shift(k) = Σ_a k_a·d_a·S_a (S_a: flat stride of
spatial axis a): the copy runs along long contiguous rows (measured 128x32x14x14, k = 3:
gather 8.0 -> 6.0 ms, scatter 14.2 -> 6.8 ms against strided copies). Its output positions
lie on the padded grid, so each output row carries (padded width − output width) unused
columns, computed and dropped; their δ is zero, so they add nothing to any gradient.
The input gradient sums the K shifted row blocks without a loop over offsets either: one
strided "skewed" view writes row block k at shift(k) in a zeroed row of its own, and one
reduction sums the rows (``SKEW_BYTES`` of rows at a time). A loop of K slice-adds cost a
fixed ~2 µs per offset: lenet5's second convolution, batch 1, 86 -> 41 µs; at batch 32,
734 -> 622 µs. ``_StridedLayout`` handles any stride: the copy reads the windows of
``_windows.windows``, and its input gradient adds back one kernel offset at a time.
``_InterleavedLayout`` lays the samples side by side, (C, *slab, b), so its patch matrix has
columns (*out, n) and none unused, at the price of transposing copies of x, y, δ and ∂E/∂x;
``_blocks`` takes it for stride 1 where the shifted layout's unused columns cost more
(small maps and kernels of 5: lenet5's second convolution at batch 32, forward 0.57 ->
0.45 ms, backward 1.45 -> 1.2 ms).
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from convnp.layers._windows import Pads, kernel_offsets, output_size, windows

# Bytes of patch matrix plus output matrix per block. Measured (one conv 3x3 forward +
# backward, 1 BLAS thread): 64->64 ch 32x32 batch 64, 32->32 ch 96x96 batch 32, 128->128
# 8x8 batch 128, 3->32 224x224 batch 8 take the same time within noise (±30% on this shared
# machine) for 2, 4, 8, 16, 32 and 64 MiB: blocks of a few thousand columns keep BLAS busy.
# 8 MiB leaves that margin while a layer's workspace stays small next to its activations.
WORKSPACE_BYTES = 8 * 2**20
# Bytes of patch plus output matrix per part of a block (module docstring), about
# a core's L2 cache. Measured (CPU time, 1 BLAS thread, bouvrie, lenet5, modern inference):
# 1 and 2 MiB within noise of each other; 512 KiB slowed modern's 32 -> 64 conv (one sample
# per part: the per-part Python costs show). 2 MiB: fewer products while training.
PART_BYTES = 2 * 2**20
# Columns per matrix product of the forward and the weight gradient (even runs): OpenBLAS
# (SkylakeX kernels, 1 thread) took 2-3x longer per column beyond about 4096 columns when
# the matrices have few rows, as first convolutions do (weight gradient cols·δᵀ, 9x32:
# 77 against 238 µs per 10k columns in runs of 3072; 25x6: 46 against 107; forward W·cols,
# 25x6: 44 against 80), and the same within 2% for large ones (150x16, 288x64).
PRODUCT_COLUMNS = 3072
# When blocks lay their samples side by side (_InterleavedLayout, stride 1): its patch
# matrix has none of the shifted layout's unused columns and its copies run over (last
# output axis × samples) cells, but its layout transforms (x, y, δ, ∂E/∂x between sample-first
# and sample-last order) stride over samples, about 1 ns a cell against about 0.03 ns an FMA
# of the products (1 BLAS thread), and its input gradient adds one kernel offset at a time.
# Measured (forward + backward, 1 thread; ratio: unused-column FMAs per moved cell):
# lenet5 6->16 @32 (ratio 35) 2.1 -> 1.8 ms, bouvrie 6->12 @25 (35) 1.1 -> 1.0, modern
# 32->64 @64 (25) 26 -> 24; lenet5 1->6 @32 (2.9) and bouvrie 1->6 @25 (3.4) even, modern
# 1->32 @64 (0.6) 4.7 -> 6.4 ms. Blocks of INTERLEAVED_BYTES (one part each: lenet5's
# 6->16 at batch 32 in one block, 0.5 against 0.55 ms forward in two), and at least
# INTERLEAVED_SAMPLES samples: the offsets' fixed cost is not repaid by fewer.
UNUSED_FMAS_PER_MOVED_CELL = 10
INTERLEAVED_BYTES = 4 * 2**20
INTERLEAVED_SAMPLES = 8
# Weight-gradient products cols·δᵀ of at most this many cells (C/groups·K × O/groups) go
# as matrix-vector products, one per output map (``_patch_delta_product``): OpenBLAS's
# GEMM is slow with so few rows and columns. Measured (1 thread, 14336 columns in runs of
# 2868): 25x6 (lenet5's first convolution) 204 -> 143 µs; 9x32 (modern's first) 262 ->
# 252; 150x16 243 -> 459.
GEMV_PRODUCT_CELLS = 200
# Bytes of the input gradient's skewed rows (``_ShiftedLayout.scatter``) per step: K times
# the part's flat images at most, bounded here; 256 KiB, 1 and 16 MiB were within noise
# (one run each) for bouvrie, lenet5 and modern at batches 1 and 25-64.
SKEW_BYTES = 2**20

# Arrays a ``Scratch`` role remembers to hand out again (a few views, no memory of their own).
LAST_ARRAYS = 2


@dataclass(frozen=True)
class ConvGeometry:
    """Where the kernel meets the input: kernel size, stride, (before, after) zero padding
    and dilation per spatial axis (all tuples of the same length, 1 to 3)."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    pads: Pads
    dilation: tuple[int, ...]
    # (spatial, output_shape(spatial)) of the last call: a layer asks for the same shape
    # several times a step (1.6 us each to work out); not part of the geometry's value
    _last_output: tuple = field(default=(None, None), init=False, repr=False, compare=False)

    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """PyTorch's ``Shape:`` formula per axis (0 where the kernel does not fit)."""
        last = self._last_output  # read once: inference blocks may run on several threads
        if last[0] == spatial:
            return last[1]
        shape = tuple(
            output_size(size, k, s, before, after, d)
            for size, k, s, (before, after), d in zip(
                spatial, self.kernel_size, self.stride, self.pads, self.dilation
            )
        )
        object.__setattr__(self, "_last_output", (tuple(spatial), shape))  # frozen otherwise
        return shape

    def extent(self, axis: int) -> int:
        """Input cells one dilated kernel spans along ``axis``."""
        return self.dilation[axis] * (self.kernel_size[axis] - 1) + 1


def skewed_bytes(
    batch: int, channels: int, padded: tuple[int, ...], geometry: ConvGeometry, itemsize: int
) -> int:
    """Bytes of the input gradient's skewed rows (``_ShiftedLayout.scatter``) for a batch of
    (channels, *padded) inputs: at most ``SKEW_BYTES``, or one sample of one map (0 for
    strides > 1, whose layout has none)."""
    if any(s != 1 for s in geometry.stride):
        return 0
    out_0 = padded[0] - geometry.extent(0) + 1
    flat = out_0 * math.prod(padded[1:])  # positions on the padded grid
    flat += sum(
        (k - 1) * d * math.prod(padded[a + 1 :])
        for a, (k, d) in enumerate(zip(geometry.kernel_size, geometry.dilation))
    )  # + the largest shift
    one = math.prod(geometry.kernel_size) * flat * itemsize
    return min(batch * channels * one, max(SKEW_BYTES, one))


def check_conv_arguments(
    layer: str,
    in_channels: int,
    out_channels: int,
    sizes: tuple[int, ...],
    groups: int = 1,
) -> None:
    """The arguments every convolution layer shares (``sizes``: kernel_size + stride +
    dilation); ValueError names ``layer``."""
    if min(sizes) < 1:
        raise ValueError(f"{layer}: kernel_size, stride, dilation must be >= 1")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"{layer}: in_channels and out_channels must be >= 1")
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{layer}: groups={groups} must divide in_channels={in_channels} "
            f"and out_channels={out_channels}"
        )


class Scratch:
    """One set of scratch arrays, one buffer per role, grown to the largest request and then
    reused; it also remembers which array a role's buffer was last computed from (``keep``)."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self._kept: dict[str, tuple[weakref.ref, tuple, np.ndarray]] = {}
        # the last LAST_ARRAYS arrays handed out per role, newest first, handed out again for
        # the same request: a step asks for the same shapes step after step, two per role
        # (a layer's forward and backward give "maps" and "patches" different shapes)
        self._last: dict[str, tuple[tuple[tuple[int, ...], np.dtype, np.ndarray], ...]] = {}

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self._buffers.values())

    def array(self, role: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` in the buffer of ``role``."""
        self._kept.pop(role, None)  # its content is about to change
        last = self._last.get(role, ())
        for known_shape, known_dtype, array in last:
            if known_shape == shape and known_dtype == dtype:
                return array
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        buffer = self._buffers.get(role)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = self._buffers[role] = np.empty(nbytes, dtype=np.uint8)
            last = ()  # views of the old buffer: dropped with it
        array = buffer[:nbytes].view(dtype).reshape(shape)
        self._last[role] = ((shape, dtype, array), *last[: LAST_ARRAYS - 1])
        return array

    def zeros(self, role: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        out = self.array(role, shape, dtype)
        out.fill(0)
        return out

    def keep(self, role: str, source: np.ndarray, key: tuple, value: np.ndarray) -> None:
        """Remember that ``value`` (in role's buffer) was computed from ``source`` and ``key``,
        until the buffer is handed out again or ``source`` is freed."""
        self._kept[role] = (weakref.ref(source), key, value)

    def kept(self, role: str, source: np.ndarray, key: tuple) -> np.ndarray | None:
        """The value ``keep`` recorded for this very ``source`` object and ``key``, or None."""
        entry = self._kept.get(role)
        if entry is None or entry[0]() is not source or entry[1] != key:
            return None
        return entry[2]


class Workspace:
    """The reusable scratch of one layer (or one call site), bounded by ``limit_bytes``.

    ``limit_bytes`` bounds the patch and output matrices of one block (the primitives pick
    the block from it), so one ``Scratch`` holds at most a small multiple of it. A call
    ``claim``s a scratch set for its duration: calls on several threads at once (blocks of
    an inference batch) get one set each, and later calls, on any thread, reuse the sets:
    the number of sets is the most calls that ever ran at once. ``nbytes`` says how much
    is held; copies of a layer (``copy.deepcopy``, pickling) start with an empty workspace.
    """

    def __init__(self, limit_bytes: int = WORKSPACE_BYTES) -> None:
        if limit_bytes < 1:
            raise ValueError(f"Workspace: limit_bytes must be >= 1, got {limit_bytes}")
        self.limit_bytes = int(limit_bytes)
        self._lock = threading.Lock()
        self._sets: list[Scratch] = []
        self._free: list[Scratch] = []
        self._plan: tuple[tuple, _Plan] | None = None

    def __deepcopy__(self, memo: dict) -> Workspace:
        return Workspace(self.limit_bytes)

    def __reduce__(self) -> tuple:
        return (Workspace, (self.limit_bytes,))

    def __copy__(self) -> Workspace:
        return Workspace(self.limit_bytes)

    @property
    def nbytes(self) -> int:
        """Bytes held by all scratch sets."""
        with self._lock:
            return sum(scratch.nbytes for scratch in self._sets)

    def release(self) -> None:
        """Drop every buffer (they are allocated again on the next call)."""
        with self._lock:
            self._sets, self._free = [], []

    def plan(
        self, x_shape: tuple[int, ...], out_channels: int, geometry: ConvGeometry, dtype: np.dtype
    ) -> _Plan:
        """The blocks of a convolution of an input of ``x_shape``, worked out once: the last
        shape's plan is kept (one entry, replaced by the next shape), as a layer sees the same
        shape call after call (a small Conv2d, (2, 6, 12, 12), 5x5: forward 59 -> 42 µs)."""
        key = (x_shape, out_channels, geometry, np.dtype(dtype))
        entry = self._plan
        if entry is None or entry[0] != key:
            entry = self._plan = (
                key,
                _Plan(x_shape, out_channels, geometry, self.limit_bytes, dtype),
            )
        return entry[1]

    def claim(self) -> _Claim:
        """A scratch set that no other call uses until this one returns (a context manager;
        a class, not a generator: a call's fixed cost counts at small batches)."""
        return _Claim(self)


class _Claim:
    """``with workspace.claim() as scratch``: a free scratch set (or a new one), given back
    on exit unless the workspace was released meanwhile."""

    __slots__ = ("workspace", "scratch")

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def __enter__(self) -> Scratch:
        workspace = self.workspace
        with workspace._lock:
            if workspace._free:
                self.scratch = workspace._free.pop()
            else:
                self.scratch = Scratch()
                workspace._sets.append(self.scratch)
        return self.scratch

    def __exit__(self, *exc_info: object) -> None:
        workspace = self.workspace
        with workspace._lock:
            if self.scratch in workspace._sets:  # unless released meanwhile
                workspace._free.append(self.scratch)


# -- the three primitives ----------------------------------------------------------------
def conv_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    geometry: ConvGeometry,
    *,
    groups: int = 1,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """y_j = Σ_{i in group(j)} x_i ⋆ k_ij + b_j for x (N, C, *spatial), weight (O, C/groups, *k).

    Returns a new C-contiguous (N, O, *out) array.
    """
    workspace = Workspace() if workspace is None else workspace
    out_channels = weight.shape[0]
    plan = workspace.plan(x.shape, out_channels, geometry, x.dtype)
    y = np.empty((len(x), out_channels, *plan.out_shape), dtype=x.dtype)
    kernel = _kernel_stack(weight, groups)  # (G, O/G, C/G·K)
    with workspace.claim() as scratch:
        for block in plan.blocks:
            # rows (map i, offset k), columns (n, u); a part at a time, still in the cache
            for part, cols in block.gather_parts(x, scratch):
                u = scratch.array("maps", (out_channels, cols.shape[1]), x.dtype)
                # Σ_i Σ_k k_ij(k) · x_i(u + k), one product per group (a stack: no group loop)
                for run in _runs(cols.shape[1]):
                    np.matmul(kernel, _stack(cols[:, run], groups), out=_stack(u[:, run], groups))
                if bias is not None:
                    u += bias[:, None]  # + b_j
                block.to_output(u, y, part)
    return y


def conv_weight_grad(
    x: np.ndarray,
    dy: np.ndarray,
    geometry: ConvGeometry,
    *,
    groups: int = 1,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """∂E/∂k_ij = Σ_n Σ_u δ_j(u) · p_i(u) for x (N, C, *spatial), δ = dy (N, O, *out).

    Returns the (O, C/groups, *kernel_size) gradient, summed over the blocks.
    """
    workspace = Workspace() if workspace is None else workspace
    channels, out_channels = x.shape[1], dy.shape[1]
    plan = workspace.plan(x.shape, out_channels, geometry, x.dtype)
    # Σ cols·δᵀ over blocks, parts and runs, (groups, C/groups·K, O/groups): the first product
    # starts the sum (no zero fill, contiguous adds, one transposing copy at the end)
    summed: np.ndarray | None = None
    with workspace.claim() as scratch:
        # the last block first: the forward may have left its patch matrix in the workspace
        for block in reversed(plan.blocks):
            # a part at a time as in the forward, or the forward's patches still there
            for part, cols in block.patch_parts(x, scratch):
                delta = _stack(block.from_output(dy, scratch, part), groups)  # δ_j (O, b·L)
                cols = _stack(cols, groups)
                # in even runs of at most PRODUCT_COLUMNS columns
                for run in _runs(cols.shape[2]):
                    product = _patch_delta_product(cols[..., run], delta[..., run])
                    if summed is None:
                        summed = product
                    else:
                        summed += product
    shape = (out_channels, channels // groups, *geometry.kernel_size)
    if summed is None:  # no samples
        return np.zeros(shape, dy.dtype)
    return np.ascontiguousarray(summed.swapaxes(1, 2), dtype=dy.dtype).reshape(shape)


def conv_transpose(
    dy: np.ndarray,
    weight: np.ndarray,
    geometry: ConvGeometry,
    input_spatial: tuple[int, ...],
    *,
    groups: int = 1,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """∂E/∂x_i = Σ_j conv(δ_j, rot180(k_ij), 'full'): the adjoint of ``conv_forward`` in x.

    dy (N, O, *out), weight (O, C/groups, *k); ``input_spatial`` is x's spatial shape (the
    stride may leave some input cells unseen: their gradient is zero). Returns (N, C, *input).
    """
    workspace = Workspace() if workspace is None else workspace
    n, out_channels = dy.shape[:2]
    channels = weight.shape[1] * groups
    x_shape = (n, channels, *input_spatial)
    plan = workspace.plan(x_shape, out_channels, geometry, dy.dtype)
    if plan.out_shape != dy.shape[2:]:
        raise ValueError(
            f"conv_transpose: dy of shape {dy.shape} is not the output of a convolution of "
            f"an input of spatial shape {tuple(input_spatial)}"
        )
    # every cell of dx is written by its block, unless the stride skips some (then: zeros)
    dx = np.empty(x_shape, dy.dtype) if plan.writes_all_of_x else np.zeros(x_shape, dy.dtype)
    kernel = _kernel_stack(weight, groups)
    with workspace.claim() as scratch:
        for block in plan.blocks:
            for part in block.parts:
                delta = _stack(block.from_output(dy, scratch, part), groups)
                dcols = scratch.array("patches", (block.matrix_rows, delta.shape[2]), dy.dtype)
                # Σ_j k_ij δ_j for every patch cell
                _stacked_product(kernel.swapaxes(1, 2), delta, out=_stack(dcols, groups))
                block.scatter(dcols, dx, scratch, part)  # each patch cell back to its pixel
    return dx


def _runs(width: int) -> Iterator[slice]:
    """``width`` columns in even runs of at most ``PRODUCT_COLUMNS``."""
    step = _even_step(width, PRODUCT_COLUMNS)
    return (slice(start, start + step) for start in range(0, width, step))


def _patch_delta_product(cols: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """cols δᵀ over a stack of groups: (G, C/G·K, L) and (G, O/G, L) -> (G, C/G·K, O/G).

    (cols δᵀ), not δ colsᵀ, lets BLAS stream the long L axis (1.4-2x faster). A product of
    at most ``GEMV_PRODUCT_CELLS`` cells is taken as one matrix-vector product cols δ_j per
    output map j, a stack that np.matmul hands to BLAS one by one (no Python loop)."""
    if cols.shape[1] * delta.shape[1] <= GEMV_PRODUCT_CELLS:
        return np.matmul(cols[:, None], delta[..., None])[..., 0].swapaxes(1, 2)
    return np.matmul(cols, delta.swapaxes(1, 2))


def _even_step(total: int, most: int) -> int:
    """The step that cuts ``total`` items into as few pieces of at most ``most`` as
    possible, as even as their count allows (5 by at most 4: 3 + 2, not 4 + 1)."""
    if total < 1:
        return 1
    pieces = -(-total // max(1, most))
    return -(-total // pieces)


def _kernel_stack(weight: np.ndarray, groups: int) -> np.ndarray:
    """(O, C/groups, *k) -> (groups, O/groups, C/groups·K): group g's output maps' kernels
    as one matrix (their input maps' patches are the g-th row block of the patch matrix)."""
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide out_channels={weight.shape[0]}")
    return weight.reshape(groups, weight.shape[0] // groups, -1)


def _stacked_product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b over a stack of groups. With one column in a (a depthwise convolution's
    one output map per group) it is an outer product, which np.matmul computes in its
    generic loop, not BLAS: 64 groups, (9, 1) @ (1, 37k) float32, 1 thread measured 51 ms
    against 9 ms for the broadcast product used there."""
    if a.shape[-1] == 1:
        np.multiply(a, b, out=out)
    else:
        np.matmul(a, b, out=out)


def _stack(matrix: np.ndarray, groups: int) -> np.ndarray:
    """A (rows, columns) matrix viewed as ``groups`` row blocks: (groups, rows/groups, columns)."""
    return matrix.reshape(groups, -1, matrix.shape[-1])


# -- blocks and layouts (the layout tricks live here) ---------------------------------------
class _Plan:
    """The blocks of one convolution problem (x's shape, output maps, geometry, dtype), made
    once per shape and kept by the layer's ``Workspace``."""

    def __init__(
        self,
        x_shape: tuple[int, ...],
        out_channels: int,
        geometry: ConvGeometry,
        limit_bytes: int,
        dtype: np.dtype,
    ) -> None:
        self.out_shape = geometry.output_shape(tuple(x_shape[2:]))
        self.blocks = tuple(_blocks(x_shape, out_channels, geometry, limit_bytes, dtype))
        # blocks of whole samples whose slabs reach every input row write all of dx
        self.writes_all_of_x = all(
            block.whole_rows and block.x_index[0] == slice(0, x_shape[2]) for block in self.blocks
        )


def _blocks(
    x_shape: tuple[int, ...],
    out_channels: int,
    geometry: ConvGeometry,
    limit_bytes: int,
    dtype: np.dtype,
) -> Iterator[_Block]:
    """Blocks of samples (as even as their count allows), or of output rows of one sample,
    whose patch matrix (C·K rows) and output matrix (O rows) fit in ``limit_bytes`` (at
    least one output row); or blocks of samples side by side (``_InterleavedLayout``), of
    at most ``INTERLEAVED_BYTES``, when that layout is the faster one (its constants)."""
    n, channels, *spatial = x_shape
    out_shape = geometry.output_shape(tuple(spatial))
    if min(out_shape, default=1) < 1:
        raise ValueError(
            f"convolution: kernel (dilated extent "
            f"{tuple(geometry.extent(a) for a in range(len(spatial)))}) is larger than the "
            f"padded input of spatial shape {tuple(spatial)}"
        )
    taps = math.prod(geometry.kernel_size)
    itemsize = np.dtype(dtype).itemsize
    # samples side by side: blocks of one part, when they hold enough samples and the
    # shifted layout's unused columns would cost more than the layout transforms
    valid = math.prod(out_shape)
    sample_bytes = (channels * taps + out_channels) * valid * itemsize
    per_block = min(limit_bytes, INTERLEAVED_BYTES) // sample_bytes
    padded = [s + b + a for s, (b, a) in zip(spatial, geometry.pads)]
    unused = math.prod(out_shape[:1] + tuple(padded[1:])) - valid  # per sample, shifted
    moved = out_channels * valid + channels * math.prod(padded)  # per sample, transposed
    if (
        min(n, per_block) >= INTERLEAVED_SAMPLES
        and all(s == 1 for s in geometry.stride)
        and channels * taps * out_channels * unused >= UNUSED_FMAS_PER_MOVED_CELL * moved
    ):
        samples = _even_step(n, per_block)
        for start in range(0, n, samples):
            batch = range(start, min(n, start + samples))
            yield _InterleavedLayout(x_shape, geometry, batch, None, out_channels, itemsize)
        return
    # widest row: the shifted layout computes the padded width
    row = math.prod(s + b + a for s, (b, a) in zip(spatial[1:], geometry.pads[1:]))
    row_bytes = (channels * taps + out_channels) * row * itemsize
    budget = max(1, limit_bytes // row_bytes)  # output rows per block
    layout = _layout_for(geometry)
    if budget >= out_shape[0]:
        samples = _even_step(n, budget // out_shape[0])
        for start in range(0, n, samples):
            batch = range(start, min(n, start + samples))
            yield layout(x_shape, geometry, batch, None, out_channels, itemsize)
    else:
        for sample in range(n):
            for first in range(0, out_shape[0], budget):
                rows = range(first, min(out_shape[0], first + budget))
                yield layout(
                    x_shape, geometry, range(sample, sample + 1), rows, out_channels, itemsize
                )


def _layout_for(geometry: ConvGeometry) -> type[_ShiftedLayout | _StridedLayout]:
    """The faster layout for this geometry: shifted flat images when the stride is 1."""
    return _ShiftedLayout if all(s == 1 for s in geometry.stride) else _StridedLayout


class _Block:
    """One block: samples ``samples`` and output rows ``rows`` (all when None) of axis 0.

    The block reads the padded input rows [rows[0]·s, rows[-1]·s + extent) of axis 0 and
    all of the other axes (the "slab"), copied maps-first, (C, B, *slab), into the
    workspace with its zero padding; gradients come back through the same slab.
    """

    #: Axes of the slab before its spatial ones: (C, B, *slab).
    SLAB_LEADING_AXES = 2

    def __init__(
        self,
        x_shape: tuple[int, ...],
        geometry: ConvGeometry,
        samples: range,
        rows: range | None,
        out_channels: int,
        itemsize: int,
    ) -> None:
        n, self.channels, *spatial = x_shape
        self.geometry = geometry
        self.spatial = tuple(spatial)
        self.samples = slice(samples.start, samples.stop)
        self.batch = len(samples)
        self.taps = math.prod(geometry.kernel_size)
        self.matrix_rows = self.channels * self.taps  # of the patch matrix
        out_shape = geometry.output_shape(self.spatial)
        rows = range(out_shape[0]) if rows is None else rows
        self.rows = slice(rows.start, rows.stop)
        self.out_shape = (len(rows), *out_shape[1:])
        self.columns = math.prod(self.out_shape)  # patch-matrix columns per sample
        before, stride0 = geometry.pads[0][0], geometry.stride[0]
        first = rows.start * stride0  # padded coordinates of the slab along axis 0
        last = (rows.stop - 1) * stride0 + geometry.extent(0)
        self.slab = (
            last - first,
            *(s + b + a for s, (b, a) in zip(spatial[1:], geometry.pads[1:])),
        )
        # the input cells inside the slab: x[..., x_rows, ...] goes to slab[..., interior]
        x_first, x_last = max(0, first - before), min(spatial[0], last - before)
        self.x_index = (slice(x_first, max(x_first, x_last)), *(slice(None),) * (len(spatial) - 1))
        self.interior = (
            slice(x_first + before - first, max(x_first, x_last) + before - first),
            *(slice(b, b + s) for s, (b, _) in zip(spatial[1:], geometry.pads[1:])),
        )
        # the slab's zero padding: below and above the interior along each axis
        everything = (slice(None), slice(None))
        self.padding = [
            everything + (slice(None),) * a + (edge,)
            for a, inside in enumerate(self.interior)
            for edge in (slice(0, inside.start), slice(inside.stop, self.slab[a]))
            if edge.stop > edge.start
        ]
        self.whole_rows = rows.start == 0 and rows.stop == out_shape[0]
        self.out_channels, self.itemsize = out_channels, itemsize

    @functools.cached_property
    def offsets(self) -> list[tuple[tuple, tuple]]:
        """(the index of kernel offset k's row block in dcols (C, *k, ...), the index of the
        sub-slab that k meets) for every k, built once per block: the scatters loop over
        them on every call, and rebuilding 25 of them cost ~90 µs of Python a call."""
        g, lead = self.geometry, (slice(None),) * self.SLAB_LEADING_AXES
        return [
            ((slice(None), *offset), (*lead, *slices))
            for offset, slices in kernel_offsets(
                g.kernel_size, g.stride, g.dilation, self.out_shape
            )
        ]

    @functools.cached_property
    def parts(self) -> list[slice]:
        """The block's samples in parts of about ``PART_BYTES`` of patch and output matrix
        (C·K + out_channels rows), as even as their count allows: a part's matrices are
        still in the CPU cache when the product reads them."""
        row_bytes = (self.matrix_rows + self.out_channels) * self.columns * self.itemsize
        step = _even_step(self.batch, PART_BYTES // row_bytes)
        return [slice(start, min(self.batch, start + step)) for start in range(0, self.batch, step)]

    def gather_parts(self, x: np.ndarray, scratch: Scratch) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (part, the part's patch matrix (C·K, b·L) of x), each part gathered into the
        same scratch buffer just before its product reads it; a block in one part keeps its
        matrix for ``patch_parts``."""
        view = self._gather(x, scratch)  # (C, *k, B, *columns)
        before_samples = (slice(None),) * (1 + len(self.geometry.kernel_size))
        for part in self.parts:
            source = view[before_samples + (part,)]
            patches = scratch.array("patches", source.shape, x.dtype)
            np.copyto(patches, source)
            matrix = patches.reshape(self.matrix_rows, -1)
            if len(self.parts) == 1:
                scratch.keep("patches", x, self._key(x), matrix)
            yield part, matrix

    def patch_parts(self, x: np.ndarray, scratch: Scratch) -> Iterator[tuple[slice, np.ndarray]]:
        """As ``gather_parts``, but the whole block at once, not gathered again, when the
        workspace still holds its matrix from a forward of this same array x: x must not
        change in between, which holds for a layer's cached input (PyTorch raises on such
        a change; a NumPy array carries no version to check)."""
        matrix = scratch.kept("patches", x, self._key(x))
        if matrix is None:
            yield from self.gather_parts(x, scratch)
        else:
            yield slice(0, self.batch), matrix

    def _in_batch(self, part: slice) -> slice:
        """Samples ``part`` of this block as samples of the whole batch."""
        return slice(self.samples.start + part.start, self.samples.start + part.stop)

    def _key(self, x: np.ndarray) -> tuple:
        return (self.geometry, self.samples, self.rows, x.shape, x.dtype)

    def _fill_slab(self, slab: np.ndarray, x: np.ndarray) -> None:
        """slab (C, B, *slab) = the block's padded input, maps first."""
        for padding in self.padding:
            slab[padding] = 0
        source = x[(self.samples, slice(None), *self.x_index)]
        slab[(slice(None), slice(None), *self.interior)] = source.swapaxes(0, 1)

    def _add_slab(self, slab: np.ndarray, dx: np.ndarray, part: slice) -> None:
        """dx[part] += the slab's gradient inside the input (the padding's is dropped);
        blocks of whole samples do not overlap, so they are written, not added."""
        inside = slab[(slice(None), slice(None), *self.interior)].swapaxes(0, 1)
        target = (self._in_batch(part), slice(None), *self.x_index)
        if self.whole_rows:
            dx[target] = inside
        else:  # row blocks of one sample share the input rows their kernels both reach
            dx[target] += inside


class _StridedLayout(_Block):
    """Any stride: row block k of the matrix is the strided sub-slab that offset k meets."""

    def _gather(self, x: np.ndarray, scratch: Scratch) -> np.ndarray:
        slab = scratch.array("slab", (self.channels, self.batch, *self.slab), x.dtype)
        self._fill_slab(slab, x)
        g, nd = self.geometry, len(self.slab)
        # (C, B, *out, *k) -> (C, *k, B, *out): one copy for all kernel offsets
        view = windows(slab, g.kernel_size, g.stride, g.dilation, self.out_shape)
        return view.transpose(0, *range(2 + nd, 2 + 2 * nd), 1, *range(2, 2 + nd))

    def to_output(self, u: np.ndarray, y: np.ndarray, part: slice) -> None:
        block = u.reshape(len(u), -1, *self.out_shape).swapaxes(0, 1)
        y[(self._in_batch(part), slice(None), self.rows)] = block

    def from_output(
        self, dy: np.ndarray, scratch: Scratch, part: slice | None = None
    ) -> np.ndarray:
        out_channels = dy.shape[1]
        samples = self.samples if part is None else self._in_batch(part)
        batch = samples.stop - samples.start
        delta = scratch.array("maps", (out_channels, batch, *self.out_shape), dy.dtype)
        delta[...] = dy[(samples, slice(None), self.rows)].swapaxes(0, 1)
        return delta.reshape(out_channels, -1)

    def scatter(self, dcols: np.ndarray, dx: np.ndarray, scratch: Scratch, part: slice) -> None:
        batch = part.stop - part.start
        slab = scratch.zeros("slab", (self.channels, batch, *self.slab), dcols.dtype)
        dcols = dcols.reshape(self.channels, *self.geometry.kernel_size, batch, *self.out_shape)
        for row_block, sub_slab in self.offsets:
            slab[sub_slab] += dcols[row_block]
        self._add_slab(slab, dx, part)


class _ShiftedLayout(_Block):
    """Stride 1: the slab laid out flat per (map, sample); row block k = the flat slab
    shifted by shift(k); columns (n, o_0, p_1, ..., p_last) run over the padded grid."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        flat_strides = [math.prod(self.slab[a + 1 :]) for a in range(len(self.slab))]
        self.shift_steps = [d * s for d, s in zip(self.geometry.dilation, flat_strides)]
        self.wide_shape = (self.out_shape[0], *self.slab[1:])  # out_0 rows of the padded grid
        self.positions = self.columns = math.prod(self.wide_shape)
        self.image_size = math.prod(self.slab)
        # the last shifted read runs past the image by the shifts of axes 1.. (zeros)
        kernel = self.geometry.kernel_size
        self.flat_size = sum((k - 1) * step for k, step in zip(kernel, self.shift_steps))
        self.flat_size += self.positions
        self.valid = (slice(None), slice(None), *(slice(0, o) for o in self.out_shape))
        # the padded grid's columns past the output, axis by axis (their δ is 0)
        self.unused = [
            self.valid[: 2 + a] + (slice(self.out_shape[a], None),)
            for a in range(1, len(self.out_shape))
            if self.out_shape[a] < self.wide_shape[a]
        ]
        # the scatter's skewed view: a step along kernel axis a moves R_a rows (R_a: offsets
        # per step of axis a) and shift_steps[a] cells
        self.skew_steps = [
            (math.prod(kernel[a + 1 :]), step) for a, step in enumerate(self.shift_steps)
        ]

    def _flat(self, scratch: Scratch, dtype: np.dtype, batch: int) -> tuple[np.ndarray, np.ndarray]:
        flat = scratch.array("slab", (self.channels, batch, self.flat_size), dtype)
        image = flat[:, :, : self.image_size].reshape(self.channels, batch, *self.slab)
        return flat, image

    def _gather(self, x: np.ndarray, scratch: Scratch) -> np.ndarray:
        flat, image = self._flat(scratch, x.dtype, self.batch)
        flat[:, :, self.image_size :] = 0
        self._fill_slab(image, x)
        # row block k = the flat images shifted by shift(k): one strided view for all k
        # (a step along kernel axis a shifts by d_a·S_a cells), copied by the caller
        # (np.ndarray on the buffer, not as_strided's Python wrapper: a fixed cost per call)
        view = np.ndarray(
            (self.channels, *self.geometry.kernel_size, self.batch, self.positions),
            flat.dtype,
            flat,
            strides=(
                flat.strides[0],
                *(step * flat.itemsize for step in self.shift_steps),
                *flat.strides[1:],
            ),
        )
        view.flags.writeable = False  # its cells overlap: a write would change several
        return view

    def to_output(self, u: np.ndarray, y: np.ndarray, part: slice) -> None:
        wide = u.reshape(len(u), -1, *self.wide_shape)
        y[(self._in_batch(part), slice(None), self.rows)] = wide[self.valid].swapaxes(0, 1)

    def from_output(
        self, dy: np.ndarray, scratch: Scratch, part: slice | None = None
    ) -> np.ndarray:
        out_channels = dy.shape[1]
        samples = self.samples if part is None else self._in_batch(part)
        batch = samples.stop - samples.start
        wide = scratch.array("maps", (out_channels, batch, *self.wide_shape), dy.dtype)
        for unused in self.unused:
            wide[unused] = 0  # unused columns: δ = 0
        wide[self.valid] = dy[(samples, slice(None), self.rows)].swapaxes(0, 1)
        return wide.reshape(out_channels, -1)

    def scatter(self, dcols: np.ndarray, dx: np.ndarray, scratch: Scratch, part: slice) -> None:
        batch = part.stop - part.start
        flat, image = self._flat(scratch, dcols.dtype, batch)
        dcols = dcols.reshape(self.channels, *self.geometry.kernel_size, batch, self.positions)
        # flat = Σ_k (row block k of dcols shifted by shift(k)), in chunks of maps (or of
        # samples of one map) of at most SKEW_BYTES of rows (one sample of one map at least)
        offset_bytes = self.taps * self.flat_size * dcols.itemsize  # one sample of one map
        samples = min(batch, max(1, SKEW_BYTES // offset_bytes))
        maps = max(1, SKEW_BYTES // (offset_bytes * batch)) if samples == batch else 1
        for first in range(0, self.channels, maps):
            chunk = slice(first, min(self.channels, first + maps))
            for start in range(0, batch, samples):
                some = slice(start, min(batch, start + samples))
                self._skewed_sum(dcols[chunk, ..., some, :], flat[chunk, some], scratch)
        self._add_slab(image, dx, part)

    def _skewed_sum(self, dcols: np.ndarray, out: np.ndarray, scratch: Scratch) -> None:
        """out (m, b, flat) = Σ_k dcols[:, k] (m, *k, b, positions) shifted by shift(k): each
        offset's rows are copied to their shift in zeroed rows of their own, through one
        strided "skewed" view for all k (no loop over offsets), and the rows are summed."""
        maps, batch = out.shape[:2]
        skewed = scratch.zeros("skewed", (maps, self.taps, batch, self.flat_size), out.dtype)
        step, itemsize = skewed.strides[1], skewed.itemsize  # one kernel offset; one cell
        view = np.ndarray(
            dcols.shape,
            skewed.dtype,
            skewed,
            strides=(
                skewed.strides[0],
                *(rows * step + shift * itemsize for rows, shift in self.skew_steps),
                *skewed.strides[2:],
            ),
        )
        np.copyto(view, dcols)
        np.add.reduce(skewed, axis=1, out=out)


class _InterleavedLayout(_Block):
    """Samples innermost, any stride: the block's slab is laid out (C, *slab, b), each
    cell's samples side by side, and its patch matrix has columns (*out, n), only the
    output's positions (no unused columns).

    Row block k of the patch matrix is the slab's strided sub-slab that offset k meets,
    one strided view for all k copied in one call; with stride 1 along the last axis its
    contiguous runs are (last output axis × b) cells long. The output and δ go between
    (N, O, *out) and (O, *out, b) by one transposing copy each, and the input gradient adds
    each offset's row block back onto its sub-slab. A block is one part (``_blocks`` sizes
    it), so the weight gradient reuses the forward's patch matrix of the last block, and
    the input gradient the weight gradient's δ of the first (lenet5's 6->16 at batch 32:
    one transposing copy of δ, 70 µs, instead of two).
    """

    #: (C, *slab, b): the samples come after the spatial axes.
    SLAB_LEADING_AXES = 1

    @functools.cached_property
    def parts(self) -> list[slice]:
        return [slice(0, self.batch)]

    def gather_parts(self, x: np.ndarray, scratch: Scratch) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield the block as its one part and its patch matrix (C·K, L·b) of x."""
        slab = scratch.array("slab", (self.channels, *self.slab, self.batch), x.dtype)
        for padding in self.padding:
            slab[padding[1:]] = 0  # (C, B, *axes) index of the base class, samples last
        source = x[(self.samples, slice(None), *self.x_index)]
        slab[(slice(None), *self.interior)] = _samples_last(source)
        # (C, *k, *out, b): kernel axis a steps d_a cells, output axis a s_a cells
        g, spatial_strides = self.geometry, slab.strides[1:-1]
        view = np.ndarray(
            (self.channels, *g.kernel_size, *self.out_shape, self.batch),
            slab.dtype,
            slab,
            strides=(
                slab.strides[0],
                *(d * step for d, step in zip(g.dilation, spatial_strides)),
                *(s * step for s, step in zip(g.stride, spatial_strides)),
                slab.strides[-1],
            ),
        )
        patches = scratch.array("patches", view.shape, x.dtype)
        np.copyto(patches, view)
        matrix = patches.reshape(self.matrix_rows, -1)
        scratch.keep("patches", x, self._key(x), matrix)
        yield slice(0, self.batch), matrix

    def to_output(self, u: np.ndarray, y: np.ndarray, part: slice) -> None:
        block = u.reshape(len(u), *self.out_shape, -1)  # (O, *out, b)
        y[self._in_batch(part)] = _samples_first(block)

    def from_output(
        self, dy: np.ndarray, scratch: Scratch, part: slice | None = None
    ) -> np.ndarray:
        """δ (O, L·b) of the block, or the one the workspace still holds from this same
        array dy (the weight gradient's, for the input gradient that follows it: dy must
        not change in between, as x must not for ``patch_parts``)."""
        key = self._key(dy)
        delta = scratch.kept("maps", dy, key)
        if delta is None:
            delta = self._transposed_delta(dy, scratch)
            scratch.keep("maps", dy, key, delta)
        return delta

    def _transposed_delta(self, dy: np.ndarray, scratch: Scratch) -> np.ndarray:
        out_channels = dy.shape[1]
        delta = scratch.array("maps", (out_channels, *self.out_shape, self.batch), dy.dtype)
        delta[...] = _samples_last(dy[self.samples])
        return delta.reshape(out_channels, -1)

    def scatter(self, dcols: np.ndarray, dx: np.ndarray, scratch: Scratch, part: slice) -> None:
        shape = (self.channels, *self.slab, self.batch)
        slab = scratch.zeros("slab", shape, dcols.dtype)
        dcols = dcols.reshape(self.channels, *self.geometry.kernel_size, *self.out_shape, -1)
        for row_block, sub_slab in self.offsets:
            slab[sub_slab] += dcols[row_block]
        inside = slab[(slice(None), *self.interior)]
        dx[(self.samples, slice(None), *self.x_index)] = _samples_first(inside)


def _samples_last(a: np.ndarray) -> np.ndarray:
    """(N, ...) -> (..., N) as a view (np.moveaxis, without its ~15 µs of axis checks)."""
    return a.transpose(*range(1, a.ndim), 0)


def _samples_first(a: np.ndarray) -> np.ndarray:
    """(..., N) -> (N, ...) as a view: the inverse of ``_samples_last``."""
    return a.transpose(a.ndim - 1, *range(a.ndim - 1))
