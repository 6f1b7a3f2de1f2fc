"""Phase synchronisation of predicted object patches by angular synchronisation (Singer 2011).

One far-field pattern leaves the constant phase of its object patch free, so the network's
patches arrive with arbitrary phase offsets phi_i. Where patches i and j overlap, the weighted
overlap product H_ij = sum_x a_i(x) conj(a_j(x)) has the phase phi_i - phi_j (plus noise), and
the leading eigenvector v of the sparse Hermitian matrix H holds v_i ~ exp(i phi_i): every
offset at once, as the least-squares (spectral) solution over all overlaps. Multiplying patch i
by conj(v_i) / |v_i| removes them.

A large scan (over ``4 * TILE_PATCHES`` patches) is solved in tiles and the tiles then
synchronised among themselves (``tiled_phases``): the one global eigenproblem needs more
iterations the larger the scan, tiles keep the cost linear.

Why not patch-by-patch matching (what inference did before): matching each patch to what is
already on the canvas propagates errors outwards from the starting patch and leaves rings
around it; it was also a Python loop over patches (600 positions: 8.6 s). Here the cost is one
gather per overlapping pair plus a sparse eigensolver, linear in the number of positions.

Patches are given on the integer canvas grid (``ptycho.stitching.Stitcher.place``): boxes
(P, h, w) complex with their top-left canvas pixels ``corners`` (P, 2) as (row, col).

Memory: ``synchronise`` reads the boxes window by window (``read_boxes(start, stop)``), so a
scan whose boxes do not fit in memory (inference spills them to a scratch file) needs only the
boxes of one window at a time. Pairs are taken in order of their first box; a window holds
the boxes from the first box of its pairs to the last partner, so boxes should be ordered
spatially (``spatial_order``): then a window is a band of the scan a few boxes wide. The
eigenproblem itself (the pairs, their products and the sparse matrix) is kept in memory:
about 100 bytes per overlapping pair.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import scipy.sparse
import scipy.sparse.linalg
import torch
from typing import Callable

from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

_PAIRS_PER_CHUNK = 4096  # bounds the gather memory: chunk x h x w complex values

WINDOW_BOXES = 4096
"""Boxes read at once by ``synchronise`` (more where one box's partners lie further apart in the
order). A constant, not a memory setting: torch's sums are not invariant to how pairs are
batched (the last bits change), so a fixed window makes the result the same wherever the boxes
are kept."""


def spatial_order(xy: np.ndarray) -> np.ndarray:
    """An order of points (P, 2) in which neighbours come close together: sorted along the scan's
    longer side first (so a window of neighbours spans the shorter side: a band of the scan)."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    extent = xy.max(axis=0) - xy.min(axis=0)
    major = 0 if extent[0] >= extent[1] else 1
    return np.lexsort((xy[:, 1 - major], xy[:, major]))


MIN_OVERLAP = 1e-3
"""Pairs whose stitching weights overlap less than this share of a box's own (``overlapping_pairs``
given the weights) are left out. On synthetic scans of the default geometry (14 px window times
|P|^2, step 3.5 px) this keeps 10 of 36 overlapping neighbours per patch, makes the products 4x
and the eigenproblem 1.8x cheaper, and moves the recovered offsets' error from 0.0229 to 0.0233 rad."""


def overlapping_pairs(corners: np.ndarray, box: tuple[int, int], weights: np.ndarray | None = None) -> np.ndarray:
    """(K, 2) index pairs i < j of boxes of size ``box`` (h, w) at ``corners`` (P, 2) that overlap,
    sorted by i, then j. Given the boxes' stitching ``weights`` (h, w), only pairs whose weights
    overlap by at least ``MIN_OVERLAP`` of sum(weights^2): the others say next to nothing about
    their phase difference."""
    if len(corners) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    height, width = box
    # Chebyshev distance on coordinates scaled so that "overlap" is one radius for rows and columns.
    scaled = corners.astype(np.float64) / np.array([height, width], dtype=np.float64)
    pairs = cKDTree(scaled).query_pairs(r=1.0 - 0.5 / max(height, width), p=np.inf, output_type="ndarray")
    pairs = pairs.astype(np.int64).reshape(-1, 2)
    if weights is not None:
        weights = np.abs(np.asarray(weights, dtype=np.float64))
        # By FFT: the direct method costs (h w)^2, 7 s per call for the 129 px boxes of a 128 px scan;
        # its rounding (1e-16 of the peak) cannot move a pair across MIN_OVERLAP.
        overlap = scipy.signal.correlate(weights, weights, mode="full", method="fft") / max(np.sum(weights**2), 1e-300)
        shifts = corners[pairs[:, 1]] - corners[pairs[:, 0]]  # |shift| < box: inside the correlation
        pairs = pairs[overlap[shifts[:, 0] + height - 1, shifts[:, 1] + width - 1] >= MIN_OVERLAP]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def overlap_products(boxes: torch.Tensor, corners: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """H_ij = sum over the overlap of boxes[i] * conj(boxes[j]) for each pair (K,) complex128.

    Pairs are grouped by their integer shift (box j's corner minus box i's), so each group's
    overlap is one rectangle of plain slices: no per-pixel index arithmetic, and work equal to
    the summed overlap areas.
    """
    height, width = boxes.shape[-2:]
    shifts = corners[pairs[:, 1]] - corners[pairs[:, 0]]  # (K, 2) (dr, dc)
    order = np.lexsort((shifts[:, 1], shifts[:, 0]))
    sorted_shifts = shifts[order]
    boundaries = np.flatnonzero(np.any(np.diff(sorted_shifts, axis=0) != 0, axis=1)) + 1
    products = np.zeros(len(pairs), dtype=np.complex128)
    for group in np.split(order, boundaries):
        dr, dc = shifts[group[0]]
        # Rows r of box i meet rows r - dr of box j; likewise columns.
        rows_i = slice(max(dr, 0), height + min(dr, 0))
        rows_j = slice(max(-dr, 0), height + min(-dr, 0))
        cols_i = slice(max(dc, 0), width + min(dc, 0))
        cols_j = slice(max(-dc, 0), width + min(-dc, 0))
        for start in range(0, len(group), _PAIRS_PER_CHUNK):
            part = torch.from_numpy(pairs[group[start : start + _PAIRS_PER_CHUNK]])
            # Slice, then gather: only the overlap is copied, not whole boxes.
            first = boxes[:, rows_i, cols_i].index_select(0, part[:, 0])
            second = boxes[:, rows_j, cols_j].index_select(0, part[:, 1])
            products[group[start : start + len(part)]] = (first * second.conj()).sum(dim=(-2, -1)).numpy()
    return products


def patch_phases(boxes: torch.Tensor, corners: np.ndarray) -> np.ndarray:
    """Phase offsets theta (P,) float64 such that boxes[i] * exp(-1j theta_i) agree where they overlap.

    boxes: (P, h, w) complex, each patch times its stitching weight, on the canvas grid, all in
    memory; ``synchronise`` does the same for boxes read window by window.
    """
    return synchronise(lambda start, stop: boxes[start:stop], np.asarray(corners), tuple(boxes.shape[-2:]))


def synchronise(
    read_boxes: Callable[[int, int], torch.Tensor], corners: np.ndarray, box: tuple[int, int], *,
    weights: np.ndarray | None = None, window: int | None = None,
) -> np.ndarray:
    """Phase offsets theta (P,) float64 such that box i times exp(-1j theta_i) agrees with its neighbours.

    read_boxes(start, stop): boxes start ... stop - 1, (stop - start, h, w) complex, each patch
    times its stitching weight, on the canvas grid; corners: (P, 2) int (row, col) of each
    box's top-left pixel; box: (h, w); weights: the boxes' stitching weights (h, w), which leave
    out pairs that barely overlap (``overlapping_pairs``). About ``window`` (default ``WINDOW_BOXES``) boxes are read at a time: at least
    twice the largest distance in the order between two overlapping boxes, so that every
    window moves on by at least that much (``spatial_order`` keeps the distance to a band of
    the scan). Patches that overlap no other get 0. The common phase of all offsets is free;
    it is fixed so that the weighted mean correction is zero (the stitched object keeps the
    network's mean phase).
    """
    count = len(corners)
    pairs = overlapping_pairs(corners, box, weights)
    if len(pairs) == 0:
        return np.zeros(count)
    window = WINDOW_BOXES if window is None else window
    max_boxes = max(window, 2 * int(np.max(pairs[:, 1] - pairs[:, 0]) + 1))
    products = np.zeros(len(pairs), dtype=np.complex128)
    first = 0
    while first < len(pairs):  # one window of boxes: pairs first ... last - 1
        start = int(pairs[first, 0])
        reach = np.maximum.accumulate(pairs[first:, 1])  # the last box that the pairs from `first` on need
        last = first + max(int(np.searchsorted(reach, start + max_boxes - 1, side="right")), 1)
        stop = int(reach[last - first - 1]) + 1
        products[first:last] = overlap_products(read_boxes(start, stop), corners[start:stop], pairs[first:last] - start)
        first = last
    return scan_phases(count, pairs, products, corners, box)


TILE_PATCHES = 1024
"""Patches per tile of ``tiled_phases``; scans of more than ``4 * TILE_PATCHES`` patches are solved
in tiles. Measured on synthetic scans of the default geometry (random offsets, noisy patches):
the global eigensolver's time grows like P^1.5 (the eigengap of a scan's overlap graph shrinks
like 1 / side^2, so the iterations grow with the side), tiles of 1,024 patches keep it linear,
and the offsets agree with the global solution to a few thousandths of a radian."""


def scan_phases(count: int, pairs: np.ndarray, products: np.ndarray, corners: np.ndarray, box: tuple[int, int], *,
                tile_patches: int | None = None) -> np.ndarray:
    """Phase offsets (count,) from the overlap products: one global eigenproblem (``leading_phases``)
    for a scan of up to ``4 * tile_patches`` patches (default ``TILE_PATCHES``), else ``tiled_phases``."""
    tile_patches = TILE_PATCHES if tile_patches is None else tile_patches
    if count <= 4 * tile_patches:
        return leading_phases(count, pairs, products)
    return tiled_phases(count, pairs, products, corners, margin=max(box), tile_patches=tile_patches)


def tiled_phases(count: int, pairs: np.ndarray, products: np.ndarray, corners: np.ndarray, *, margin: float,
                 tile_patches: int) -> np.ndarray:
    """Phase offsets (count,) of a large scan, solved tile by tile and the tiles then synchronised.

    Two levels, like a two-grid method: the scan is cut into square cells of about
    ``tile_patches`` patches; each cell, widened by ``margin`` px (a box: its patches then have
    their neighbours around them), is one small eigenproblem (``leading_phases``), whose solution
    is right up to one constant per tile. The patches that two widened tiles share give the
    tiles' relative constants, a small dense eigenproblem of the same kind. Each patch takes the
    phase of the tile whose cell holds it, plus that tile's constant. The global eigenproblem
    instead needs more iterations as the scan grows: its smooth phase drifts are what the
    overlaps determine least, and here the coarse problem fixes them directly.
    """
    corners = np.asarray(corners, dtype=np.float64)
    degree = np.bincount(pairs.ravel(), weights=np.repeat(np.abs(products), 2), minlength=count)
    low = corners.min(axis=0)
    extent = np.maximum(corners.max(axis=0) - low, 1.0)
    side = max(float(np.sqrt(np.prod(extent) * tile_patches / count)), 2.0 * margin)
    cells = np.maximum(np.ceil(extent / side).astype(np.int64), 1)
    cell_of = np.minimum(((corners - low) // side).astype(np.int64), cells - 1)
    home = cell_of[:, 0] * cells[1] + cell_of[:, 1]
    local = np.zeros(count)
    members: dict[int, np.ndarray] = {}
    solutions: dict[int, np.ndarray] = {}  # exp(1j theta) of each widened tile's members
    index = np.full(count, -1, dtype=np.int64)
    for tile in np.unique(home):
        row, col = divmod(int(tile), int(cells[1]))
        lower = low + np.array([row, col]) * side - margin
        upper = low + np.array([row + 1, col + 1]) * side + margin
        inside = np.all((corners >= lower) & (corners < upper), axis=1)
        chosen = np.flatnonzero(inside)
        index[chosen] = np.arange(len(chosen))
        keep = inside[pairs[:, 0]] & inside[pairs[:, 1]]
        theta = leading_phases(len(chosen), index[pairs[keep]], products[keep])
        index[chosen] = -1
        own = home[chosen] == tile
        local[chosen[own]] = theta[own]
        members[int(tile)], solutions[int(tile)] = chosen, np.exp(1j * theta)
    # The coarse problem: C_ab = sum over shared patches of d_i exp(1j (theta_i^b - theta_i^a)) has
    # the phase c_a - c_b of the tiles' constants, as H_ij has phi_i - phi_j.
    tiles = sorted(members)
    position = {tile: k for k, tile in enumerate(tiles)}
    coarse = np.zeros((len(tiles), len(tiles)), dtype=np.complex128)
    for tile in tiles:
        row, col = divmod(tile, int(cells[1]))
        for other_row in range(row, min(row + 2, int(cells[0]))):
            for other_col in range(max(col - 1, 0), min(col + 2, int(cells[1]))):
                other = other_row * int(cells[1]) + other_col
                if other <= tile or other not in members:
                    continue
                shared, in_tile, in_other = np.intersect1d(members[tile], members[other], assume_unique=True, return_indices=True)
                value = np.sum(degree[shared] * solutions[other][in_other] * solutions[tile][in_tile].conj())
                coarse[position[tile], position[other]] = value
                coarse[position[other], position[tile]] = np.conj(value)
    constants = np.angle(_leading_vector(coarse)) if len(tiles) > 1 else np.zeros(1)
    phases = local + constants[np.searchsorted(tiles, home)]
    return _fix_common_phase(phases, degree, degree)


def _leading_vector(matrix: np.ndarray) -> np.ndarray:
    """Leading eigenvector of a small dense Hermitian matrix, normalised as in ``leading_phases``."""
    degree = np.abs(matrix).sum(axis=1)
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0)
    _, vectors = np.linalg.eigh(scale[:, None] * matrix * scale[None, :])
    return vectors[:, -1]


def _fix_common_phase(phases: np.ndarray, weights: np.ndarray, degree: np.ndarray) -> np.ndarray:
    """Phases with the free common phase fixed (zero weighted circular mean), 0 where ``degree`` is 0."""
    common = np.angle(np.sum(np.where(degree > 0, weights, 0.0) * np.exp(1j * phases)))
    return np.where(degree > 0, np.angle(np.exp(1j * (phases - common))), 0.0)


def leading_phases(count: int, pairs: np.ndarray, products: np.ndarray) -> np.ndarray:
    """Phases (count,) of the leading eigenvector of the normalised overlap matrix H (module docstring).

    pairs: (K, 2) i < j; products: (K,) H_ij. Patches in no pair get 0.
    """
    rows = np.concatenate((pairs[:, 0], pairs[:, 1]))
    cols = np.concatenate((pairs[:, 1], pairs[:, 0]))
    matrix = scipy.sparse.csr_matrix((np.concatenate((products, products.conj())), (rows, cols)), shape=(count, count))
    # Singer's normalisation D^-1/2 H D^-1/2 (D = summed |H_ij| per patch) keeps strongly
    # overlapping patches from dominating the eigenvector; it has the same phases.
    degree = np.asarray(abs(matrix).sum(axis=1)).ravel()
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0)
    normalised = scipy.sparse.diags(scale) @ matrix @ scipy.sparse.diags(scale)
    if count <= 3:
        _, vectors = np.linalg.eigh(normalised.toarray())
        leading = vectors[:, -1]
    else:
        start = np.sqrt(degree).astype(np.complex128) + 1e-12  # deterministic start vector
        # One BLAS thread: ARPACK's vector operations are small, and OpenBLAS's threads cost more
        # than they give (20,000 patches, load average 3 on 2 cores: 22.5 s with two threads, 2.7 s with one).
        with threadpool_limits(limits=1, user_api="blas"):
            _, vectors = scipy.sparse.linalg.eigsh(normalised, k=1, which="LA", v0=start, tol=1e-8, maxiter=20 * count)
        leading = vectors[:, 0]
    phases = np.where(degree > 0, np.angle(leading), 0.0)
    # Fix the free common phase: zero weighted circular mean of the corrections.
    return _fix_common_phase(phases, np.abs(leading) ** 2, degree)
