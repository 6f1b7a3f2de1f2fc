"""Phase synchronisation of predicted object patches by angular synchronisation (Singer 2011).

One far-field pattern leaves the constant phase of its object patch free, so the network's
patches arrive with arbitrary phase offsets phi_i. Where patches i and j overlap, the weighted
overlap product H_ij = sum_x a_i(x) conj(a_j(x)) has the phase phi_i - phi_j (plus noise), and
the leading eigenvector v of the sparse Hermitian matrix H holds v_i ~ exp(i phi_i): every
offset at once, as the least-squares (spectral) solution over all overlaps. Multiplying patch i
by conj(v_i) / |v_i| removes them.

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
import scipy.sparse
import scipy.sparse.linalg
import torch
from typing import Callable

from scipy.spatial import cKDTree

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


def overlapping_pairs(corners: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """(K, 2) index pairs i < j of boxes of size ``box`` (h, w) at ``corners`` (P, 2) that overlap,
    sorted by i, then j."""
    if len(corners) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    height, width = box
    # Chebyshev distance on coordinates scaled so that "overlap" is one radius for rows and columns.
    scaled = corners.astype(np.float64) / np.array([height, width], dtype=np.float64)
    pairs = cKDTree(scaled).query_pairs(r=1.0 - 0.5 / max(height, width), p=np.inf, output_type="ndarray")
    pairs = pairs.astype(np.int64).reshape(-1, 2)
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
            first = boxes.index_select(0, part[:, 0])[:, rows_i, cols_i]
            second = boxes.index_select(0, part[:, 1])[:, rows_j, cols_j]
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
    window: int | None = None,
) -> np.ndarray:
    """Phase offsets theta (P,) float64 such that box i times exp(-1j theta_i) agrees with its neighbours.

    read_boxes(start, stop): boxes start ... stop - 1, (stop - start, h, w) complex, each patch
    times its stitching weight, on the canvas grid; corners: (P, 2) int (row, col) of each
    box's top-left pixel; box: (h, w). About ``window`` (default ``WINDOW_BOXES``) boxes are read at a time: at least
    twice the largest distance in the order between two overlapping boxes, so that every
    window moves on by at least that much (``spatial_order`` keeps the distance to a band of
    the scan). Patches that overlap no other get 0. The common phase of all offsets is free;
    it is fixed so that the weighted mean correction is zero (the stitched object keeps the
    network's mean phase).
    """
    count = len(corners)
    pairs = overlapping_pairs(corners, box)
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
    return leading_phases(count, pairs, products)


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
        _, vectors = scipy.sparse.linalg.eigsh(normalised, k=1, which="LA", v0=start, tol=1e-8, maxiter=20 * count)
        leading = vectors[:, 0]
    phases = np.where(degree > 0, np.angle(leading), 0.0)
    # Fix the free common phase: zero weighted circular mean of the corrections.
    weights = np.abs(leading) ** 2
    common = np.angle(np.sum(weights * np.exp(1j * phases)))
    return np.where(degree > 0, np.angle(np.exp(1j * (phases - common))), 0.0)
