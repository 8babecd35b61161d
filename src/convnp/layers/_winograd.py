"""Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016, "Fast Algorithms for
Convolutional Neural Networks", §4) beneath the primitives ``conv_forward`` and
``conv_transpose`` of 3x3, stride 1, dilation 1, single-group 2-D convolutions; every other
convolution goes to ``_conv_ops``. Same results in exact arithmetic (tested equal to the
im2col path to float rounding), with 2.25x fewer multiplications.

F(2x2, 3x3). The 2x2 outputs of the cross-correlation of a 4x4 input tile d with a 3x3
kernel g are

    Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A        (16 multiplications instead of 36)

    Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G  = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]
    Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]

Summed over the input maps i, output map j's tile is Y_j = Aᵀ [Σ_i U_ji ⊙ V_i] A with
U_ji = G k_ij Gᵀ and V_i = Bᵀ d_i B, so at each of the 16 positions ξ of a transformed tile
the sum over i is a matrix product (Lavin & Gray, eq. 12):

    M_ξ (tiles, O) = V_ξ (tiles, C) @ U_ξᵀ (C, O)

Tiles overlap by two cells (stride 2); the input is padded with zeros to whole tiles and
the output cut from them. A bias adds to M at ξ = (1, 1): Aᵀ's column 1 is all ones, so
that entry reaches every output of the tile once.

Input gradient. For y = x̃ ⋆ k with x̃ = x padded by (p₀, p₁) along an axis,

    ∂E/∂x_i(r) = Σ_j Σ_s δ_j(r + p₀ − s) k_ij(s) = Σ_j Σ_s' δ̃_j(r + s') rot180(k_ij)(s')

(s' = 2 − s), with δ̃ = δ padded by (2 − p₀, 2 − p₁): again a 3x3 stride-1
cross-correlation, of δ̃ with the kernels rot180(k_ij) (input and output maps swapped), whose
output has x's size. So F(2x2, 3x3) serves it too, for paddings 0 to 2.

Layout (the tricks live here). Measured on modern's 32 -> 64 convolution (14x14, batch 64,
1 BLAS thread, CPU time, three interleaved runs) against ``_conv_ops``: forward 8.5-9.0 ->
6.6-6.9 ms, input gradient 9.8-10.2 -> 7.2-7.3 ms.

* Each chunk of samples is copied once into a parity layout with samples and maps innermost,
  xq[p, a, q, b, n, c] = x̃[n, c, 2a + p, 2b + q]: the tiles of tile row t read row pairs t
  and t + 1 of both parities, so every step of Bᵀ d B adds two slices whose inner axes are
  long and contiguous (a first version's strided steps along 7-tile rows of an (N, C, H, W)
  copy took several times longer, profiled).
* Maps innermost make V_ξ a (tiles, C) matrix as it stands: the product needs no copy.
* Tile rows go in runs of about ``RUN_BYTES`` (transformed tiles and products), transformed,
  multiplied and transformed back while still in the cache.
* Aᵀ M A is one product with Aᵀ ⊗ Aᵀ (4, 16) over the run: one pass over M, where the
  eight array additions of the two-sided form took about 4x longer (profiled).
* The output is assembled as (rows, columns, samples·maps) with rows one cache line longer
  than needed: with power-of-two rows (64 samples x 64 maps) the transposing copy to
  (N, O, H, W) took 5.7 ms (cache-set conflicts), with the longer rows 0.45 ms.
"""

from __future__ import annotations

import math

import numpy as np

from convnp.layers import _conv_ops
from convnp.layers._conv_ops import ConvGeometry, Workspace, _even_step
from convnp.layers._windows import Pads

# vec(G g Gᵀ) = (G ⊗ G) vec(g) and vec(Aᵀ m A) = (Aᵀ ⊗ Aᵀ) vec(m), row-major vec
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
_AT = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]])
KERNEL_TRANSFORM = np.kron(_G, _G)  # (16, 9)
OUTPUT_TRANSFORM = np.kron(_AT, _AT)  # (4, 16)
KERNEL_TRANSFORM.flags.writeable = False
OUTPUT_TRANSFORM.flags.writeable = False
# Bytes of one run's transformed tiles, products and output tiles (cache-resident between the
# three steps). Measured (modern's 32 -> 64 conv, batch 64): the 16 products and Aᵀ M A took
# 5.4 ms over the whole batch at once, 3.9 ms in runs of one tile row (about 2 MiB).
RUN_BYTES = 2 * 2**20
# Below these sizes ``_conv_ops`` is faster (measured, 1 BLAS thread, float32, padding 1,
# forward and input gradient each against ``_conv_ops``): with few maps the products are too
# thin for the transforms to pay (32 -> 64 maps: 0.75x; 16 -> 16: 0.91x; 8 -> 16: 1.5x;
# 1 -> 32: 8.6x), and with few tiles the fixed cost of about 25 NumPy calls a run shows
# (32 -> 64 maps on 14x14: 49 tiles (one sample) 1.4x, 98 tiles 1.17x, 196 tiles 0.89x).
MIN_MAPS = 16
MIN_TILES = 192
# Bytes of a chunk's arrays (its input in parity layout and its output in whole tiles) at
# most, within the workspace's limit. Measured (modern's 32 -> 64 conv, batch 64, forward +
# input gradient): 1, 2, 4, 8 MiB took 14.0, 13.5, 13.2, 13.8 ms (the same order in a
# second, busier run).
CHUNK_BYTES = 4 * 2**20
# Extra elements per row of the assembled output (module docstring): one cache line.
_ROW_PADDING = 16


def applies(
    geometry: ConvGeometry,
    groups: int,
    x_shape: tuple[int, ...],
    out_channels: int,
    itemsize: int,
    limit_bytes: int,
) -> bool:
    """Whether F(2x2, 3x3) serves this convolution: 2-D, 3x3, stride 1, dilation 1, one group,
    zero padding 0 to 2 per side (the input gradient's 2 − p ≥ 0), at least ``MIN_MAPS`` input
    and output maps and ``MIN_TILES`` output tiles in the batch, and one sample's chunk within
    ``limit_bytes`` in both directions (the forward and the input gradient)."""
    if not (
        geometry.kernel_size == (3, 3)
        and geometry.stride == (1, 1)
        and geometry.dilation == (1, 1)
        and groups == 1
        and all(0 <= p <= 2 for side in geometry.pads for p in side)
    ):
        return False
    n, channels, *spatial = x_shape
    out_shape = geometry.output_shape(tuple(spatial))
    if min(out_shape) < 1 or min(channels, out_channels) < MIN_MAPS:
        return False
    if n * math.prod(-(-o // 2) for o in out_shape) < MIN_TILES:
        return False
    forward = _Plan(x_shape[1:], out_channels, geometry.pads, itemsize)
    backward = _Plan(
        (out_channels, *out_shape), channels, _input_grad_pads(geometry.pads), itemsize
    )
    return max(forward.sample_bytes, backward.sample_bytes) <= limit_bytes


def workspace_bytes(
    geometry: ConvGeometry,
    x_shape: tuple[int, ...],
    out_channels: int,
    itemsize: int,
    limit_bytes: int,
) -> int:
    """Bytes of the scratch buffers a forward and an input gradient leave in a workspace (each
    buffer grows to the larger of the two requests); ``applies`` must hold."""
    n, channels, *spatial = x_shape
    out_shape = geometry.output_shape(tuple(spatial))
    forward = _Plan(x_shape[1:], out_channels, geometry.pads, itemsize).buffers(n, limit_bytes)
    backward = _Plan(
        (out_channels, *out_shape), channels, _input_grad_pads(geometry.pads), itemsize
    ).buffers(n, limit_bytes)
    return sum(max(forward[role], backward[role]) for role in forward)


def conv_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    geometry: ConvGeometry,
    *,
    groups: int = 1,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """y_j = Σ_i x̃_i ⋆ k_ij + b_j: ``_conv_ops.conv_forward``, by F(2x2, 3x3) where it
    ``applies``."""
    workspace = Workspace() if workspace is None else workspace
    out_channels = weight.shape[0]
    if not applies(
        geometry, groups, x.shape, out_channels, x.dtype.itemsize, workspace.limit_bytes
    ):
        return _conv_ops.conv_forward(x, weight, bias, geometry, groups=groups, workspace=workspace)
    # U_ξᵀ (16, C, O): the product's right-hand side
    kernel = np.ascontiguousarray(_transformed(weight).transpose(0, 2, 1))
    return _correlate(x, kernel, geometry.pads, bias, workspace)


def conv_transpose(
    dy: np.ndarray,
    weight: np.ndarray,
    geometry: ConvGeometry,
    input_spatial: tuple[int, ...],
    *,
    groups: int = 1,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """∂E/∂x_i = Σ_j δ̃_j ⋆ rot180(k_ij) (module docstring): ``_conv_ops.conv_transpose``, by
    F(2x2, 3x3) where it ``applies``."""
    workspace = Workspace() if workspace is None else workspace
    out_channels, channels = weight.shape[:2]
    x_shape = (len(dy), channels * groups, *input_spatial)
    if (
        not applies(
            geometry, groups, x_shape, out_channels, dy.dtype.itemsize, workspace.limit_bytes
        )
        or geometry.output_shape(tuple(input_spatial)) != dy.shape[2:]
    ):
        return _conv_ops.conv_transpose(
            dy, weight, geometry, input_spatial, groups=groups, workspace=workspace
        )
    # rot180(k_ij) with maps swapped: U'_ξ (16, O, C) maps δ's O maps to x's C maps
    kernel = _transformed(weight[:, :, ::-1, ::-1])
    return _correlate(dy, kernel, _input_grad_pads(geometry.pads), None, workspace)


def _input_grad_pads(pads: Pads) -> Pads:
    """δ̃'s zero padding (2 − p₀, 2 − p₁) per axis (module docstring)."""
    return tuple((2 - before, 2 - after) for before, after in pads)


def _transformed(weight: np.ndarray) -> np.ndarray:
    """U_ξ = G k Gᵀ at the 16 positions ξ for weight (O, C, 3, 3): (16, O, C)."""
    out_channels, channels = weight.shape[:2]
    flat = weight.reshape(out_channels * channels, 9) @ KERNEL_TRANSFORM.T.astype(weight.dtype)
    return np.ascontiguousarray(flat.T).reshape(16, out_channels, channels)


class _Plan:
    """Tiles, chunks of samples and runs of tile rows of a correlation of one sample's input
    (C, H, W) with O maps of 3x3 kernels, zero padding ``pads``."""

    def __init__(self, sample_shape: tuple[int, ...], out_channels: int, pads: Pads, itemsize: int):
        self.channels, *spatial = sample_shape
        self.out_channels, self.pads, self.itemsize = out_channels, pads, itemsize
        self.out_shape = tuple(s + b + a - 2 for s, (b, a) in zip(spatial, pads))
        self.tiles = tuple(-(-o // 2) for o in self.out_shape)  # tile rows, tile columns
        rows, columns = self.tiles
        c, o = self.channels, out_channels
        # per sample: the parity input copy and the assembled output (the chunk's arrays)
        self.sample_bytes = (4 * (rows + 1) * (columns + 1) * c + 4 * rows * columns * o) * itemsize
        # per sample and tile row: row pairs (4 x 2 parities), tiles V, products M, output tiles
        self.row_bytes = (
            8 * (columns + 1) * c + 16 * columns * (c + o) + 4 * columns * o
        ) * itemsize

    def samples(self, n: int, limit_bytes: int) -> int:
        """Samples per chunk: the chunk's arrays within ``CHUNK_BYTES`` and ``limit_bytes``
        (one sample at least), chunks as even as their count allows."""
        return _even_step(n, min(CHUNK_BYTES, limit_bytes) // self.sample_bytes)

    def rows(self, samples: int) -> int:
        """Tile rows per run: the run's arrays within about ``RUN_BYTES``."""
        return _even_step(self.tiles[0], RUN_BYTES // (samples * self.row_bytes))

    def parity_shape(self, samples: int) -> tuple[int, ...]:
        """The chunk's input in parity layout (``_fill_parity``)."""
        tile_rows, columns = self.tiles
        return (2, tile_rows + 1, 2, columns + 1, samples, self.channels)

    def output_shape(self, samples: int) -> tuple[int, ...]:
        """The chunk's assembled output: (rows·columns of whole tiles, samples·O + padding)."""
        return (4 * math.prod(self.tiles), samples * self.out_channels + _ROW_PADDING)

    def run_shapes(self, samples: int, rows: int) -> dict[str, tuple[int, ...]]:
        """The arrays of a run of ``rows`` tile rows of a chunk of ``samples``."""
        columns, c, o = self.tiles[1], self.channels, self.out_channels
        return {
            "row pairs": (4, rows, 2, columns + 1, samples, c),  # Bᵀ d
            "tiles": (4, 4, rows, columns, samples, c),  # V = Bᵀ d B
            "products": (16, rows * columns * samples, o),  # M
            "output tiles": (2, 2, rows, columns, samples, o),  # Aᵀ M A
        }

    def buffers(self, n: int, limit_bytes: int) -> dict[str, int]:
        """Bytes per scratch role after a batch of n (the largest chunk and run)."""
        samples = self.samples(n, limit_bytes)
        shapes = {
            "input": self.parity_shape(samples),
            "output": self.output_shape(samples),
            **self.run_shapes(samples, self.rows(samples)),
        }
        return {role: math.prod(shape) * self.itemsize for role, shape in shapes.items()}


def _correlate(
    x: np.ndarray, kernel: np.ndarray, pads: Pads, bias: np.ndarray | None, workspace: Workspace
) -> np.ndarray:
    """y = x̃ ⋆ k (+ b) for x (N, C, H, W) and transformed kernels kernel (16, C, O), x̃ = x
    padded by ``pads``, by F(2x2, 3x3); returns a new (N, O, H + p − 2, W + p − 2) array."""
    n = len(x)
    out_channels = kernel.shape[2]
    plan = _Plan(x.shape[1:], out_channels, pads, x.itemsize)
    (tile_rows, columns), (out_h, out_w) = plan.tiles, plan.out_shape
    (top, _), (left, _) = pads
    y = np.empty((n, out_channels, out_h, out_w), x.dtype)
    output_transform = OUTPUT_TRANSFORM.astype(x.dtype)
    step = plan.samples(n, workspace.limit_bytes)
    with workspace.claim() as scratch:
        for start in range(0, n, step):
            chunk = x[start : start + step]
            b = len(chunk)
            parity = scratch.zeros("winograd input", plan.parity_shape(b), x.dtype)
            _fill_parity(parity, chunk, top, left)
            flat = scratch.array("winograd output", plan.output_shape(b), x.dtype)
            wide = b * out_channels
            # out[a, p, c, q, n, o] = y[n, o, 2a + p, 2c + q]
            out = flat[:, :wide].reshape(tile_rows, 2, columns, 2, b, out_channels)
            rows = plan.rows(b)
            for first in range(0, tile_rows, rows):
                run = slice(first, min(tile_rows, first + rows))
                shapes = plan.run_shapes(b, run.stop - run.start)
                tiles = _input_tiles(parity, run, scratch, shapes)
                products = scratch.array("winograd products", shapes["products"], x.dtype)
                # M_ξ = V_ξ U_ξᵀ: the sums over the input maps, 16 products in one call
                np.matmul(tiles.reshape(16, -1, tiles.shape[-1]), kernel, out=products)
                if bias is not None:
                    products[5] += bias  # ξ = (1, 1) reaches every output of its tile once
                y_tiles = scratch.array("winograd output tiles", shapes["output tiles"], x.dtype)
                # Aᵀ M A for every tile: (Aᵀ ⊗ Aᵀ) (4, 16) @ M (16, tiles·O)
                np.matmul(output_transform, products.reshape(16, -1), out=y_tiles.reshape(4, -1))
                out[run] = y_tiles.transpose(2, 0, 3, 1, 4, 5)
            assembled = flat[:, :wide].reshape(2 * tile_rows, 2 * columns, b, out_channels)
            y[start : start + b] = assembled[:out_h, :out_w].transpose(2, 3, 0, 1)
    return y


def _fill_parity(parity: np.ndarray, x: np.ndarray, top: int, left: int) -> None:
    """parity[p, a, q, b, n, c] = x̃[n, c, 2a + p, 2b + q] (zero-filled: the padding stays 0);
    x̃'s row 2a + p is x's row 2a + p − top."""
    height, width = x.shape[2:]
    for p in range(2):
        first_row = (p - top) % 2  # x's first row of x̃-parity p
        a = (first_row + top - p) // 2
        for q in range(2):
            first_column = (q - left) % 2
            b = (first_column + left - q) // 2
            source = x[:, :, first_row::2, first_column::2]
            rows, columns = source.shape[2:]
            parity[p, a : a + rows, q, b : b + columns] = source.transpose(2, 3, 0, 1)


def _input_tiles(
    parity: np.ndarray, run: slice, scratch: _conv_ops.Scratch, shapes: dict
) -> np.ndarray:
    """V = Bᵀ d B for the tiles of tile rows ``run``: (4, 4, rows, columns, samples, C).

    Tile (a, b)'s rows are x̃'s rows 2a .. 2a + 3, i.e. parity 0 and 1 of row pairs a and
    a + 1 (columns likewise): Bᵀ's four rows are d₀ − d₂, d₁ + d₂, d₂ − d₁, d₁ − d₃."""
    columns = parity.shape[3] - 1
    next_run = slice(run.start + 1, run.stop + 1)
    even, odd = parity[0, run], parity[1, run]  # rows d₀, d₁ of each tile
    even_next, odd_next = parity[0, next_run], parity[1, next_run]  # d₂, d₃
    pairs = scratch.array("winograd row pairs", shapes["row pairs"], parity.dtype)
    _apply_bt(even, odd, even_next, odd_next, pairs)  # Bᵀ d: (4, rows, 2, columns + 1, ...)
    tiles = scratch.array("winograd tiles", shapes["tiles"], parity.dtype)
    for i in range(4):  # (Bᵀ d) B: the same four combinations along the columns
        row = pairs[i]
        _apply_bt(row[:, 0, :columns], row[:, 1, :columns], row[:, 0, 1:], row[:, 1, 1:], tiles[i])
    return tiles


def _apply_bt(
    d0: np.ndarray, d1: np.ndarray, d2: np.ndarray, d3: np.ndarray, out: np.ndarray
) -> None:
    """out[0..3] = Bᵀ (d₀, d₁, d₂, d₃): d₀ − d₂, d₁ + d₂, d₂ − d₁, d₁ − d₃."""
    np.subtract(d0, d2, out=out[0])
    np.add(d1, d2, out=out[1])
    np.subtract(d2, d1, out=out[2])
    np.subtract(d1, d3, out=out[3])
