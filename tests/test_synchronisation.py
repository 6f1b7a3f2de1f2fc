"""Angular synchronisation of patch phases: known offsets are recovered, with no seams or rings."""

import numpy as np
import torch

from ptycho import physics
from ptycho.simulate import gaussian_random_field
from ptycho.stitching import Stitcher, canvas_frame
from ptycho.synchronisation import overlap_products, overlapping_pairs, patch_phases, scan_phases, spatial_order, synchronise


def test_overlapping_pairs_are_exactly_the_boxes_that_share_a_pixel():
    rng = np.random.default_rng(0)
    corners = rng.integers(0, 60, (40, 2))
    box = (10, 14)
    found = {tuple(p) for p in overlapping_pairs(corners, box)}
    expected = {
        (i, j) for i in range(40) for j in range(i + 1, 40)
        if abs(corners[i, 0] - corners[j, 0]) < box[0] and abs(corners[i, 1] - corners[j, 1]) < box[1]
    }
    assert found == expected


def synchronised_scan(offsets_rad, rng, jitter=0.0):
    """Ideal patches of a smooth phase object, each times exp(1j offset), stitched with and without sync."""
    size = 32
    obj = np.exp(1j * 2.0 * gaussian_random_field((160, 160), 6.0, rng)).astype(np.complex64)
    ticks = np.arange(24.0, 137.0, 8.0)
    xcoords, ycoords = (a.ravel() + rng.uniform(-jitter, jitter, a.size) for a in np.meshgrid(ticks, ticks))
    patches = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(xcoords), torch.from_numpy(ycoords), size)
    offsets = offsets_rad(len(xcoords))
    patches = patches * torch.polar(torch.ones(len(offsets)), torch.from_numpy(offsets).float()).view(-1, 1, 1)
    origin, shape = canvas_frame(xcoords, ycoords, size)
    support = torch.zeros(size, size)
    support[8:24, 8:24] = 1.0
    results = {}
    for label in ("plain", "synced"):
        stitcher = Stitcher(origin, shape, support)
        placed = stitcher.place(patches, torch.from_numpy(xcoords), torch.from_numpy(ycoords))
        phases = torch.from_numpy(patch_phases(placed.values, placed.corners)).float() if label == "synced" else None
        stitcher.add(placed, phases)
        results[label] = stitcher.result()
    x0, y0 = origin
    return results, obj[y0 : y0 + shape[0], x0 : x0 + shape[1]], offsets


def phase_errors(stitched, coverage, truth):
    """Per-pixel phase error (rad) on well-covered pixels after removing one global phase."""
    well = coverage > 0.5 * coverage.max()
    offset = np.angle(np.sum(truth[well] * np.conj(stitched[well])))
    return np.abs(np.angle(stitched[well] * np.exp(1j * offset) * np.conj(truth[well])))


def test_random_offsets_are_removed_to_within_a_hundredth_of_a_radian():
    rng = np.random.default_rng(2)
    results, truth, _ = synchronised_scan(lambda n: rng.uniform(-np.pi, np.pi, n), rng)
    assert phase_errors(*results["plain"], truth).mean() > 0.5  # the offsets do matter
    errors = phase_errors(*results["synced"], truth)
    # max as well as mean: a seam or a ring would be a band of large errors
    assert errors.mean() < 0.01 and errors.max() < 0.05


def test_subpixel_positions_are_synchronised_too():
    rng = np.random.default_rng(3)
    results, truth, _ = synchronised_scan(lambda n: rng.uniform(-np.pi, np.pi, n), rng, jitter=1.5)
    assert phase_errors(*results["synced"], truth).mean() < 0.02


def test_the_recovered_offsets_are_the_applied_ones_up_to_one_constant():
    rng = np.random.default_rng(4)
    size = 16
    obj = np.exp(1j * gaussian_random_field((80, 80), 4.0, rng)).astype(np.complex64)
    ticks = np.arange(12.0, 69.0, 5.0)
    xcoords, ycoords = (a.ravel() for a in np.meshgrid(ticks, ticks))
    patches = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(xcoords), torch.from_numpy(ycoords), size)
    applied = rng.uniform(-np.pi, np.pi, len(xcoords))
    patches = patches * torch.polar(torch.ones(len(applied)), torch.from_numpy(applied).float()).view(-1, 1, 1)
    origin, shape = canvas_frame(xcoords, ycoords, size)
    stitcher = Stitcher(origin, shape, torch.ones(size, size))
    placed = stitcher.place(patches, torch.from_numpy(xcoords), torch.from_numpy(ycoords))
    found = patch_phases(placed.values, placed.corners)
    difference = np.angle(np.exp(1j * (found - applied)))
    spread = np.abs(np.angle(np.exp(1j * (difference - difference[0]))))
    assert spread.max() < 1e-3


def test_patches_without_neighbours_keep_their_phase():
    boxes = torch.ones(2, 4, 4, dtype=torch.complex64) * 1j
    assert np.array_equal(patch_phases(boxes, np.array([[0, 0], [10, 10]])), np.zeros(2))


def test_boxes_read_window_by_window_give_the_phases_of_boxes_in_memory():
    rng = np.random.default_rng(5)
    corners = rng.integers(0, 300, (400, 2)) * np.array([1, 3])  # a scan three times wider than high
    corners = corners[spatial_order(corners[:, ::-1])]
    boxes = torch.polar(torch.ones(400, 12, 12), torch.from_numpy(rng.uniform(-3, 3, (400, 1, 1))).float().expand(400, 12, 12).contiguous())
    reads = []

    def read(start, stop):
        reads.append(stop - start)
        return boxes[start:stop]

    windowed = synchronise(read, corners, (12, 12), window=40)
    assert len(reads) > 5 and max(reads) < 400  # read in windows, never whole
    np.testing.assert_allclose(np.angle(np.exp(1j * (windowed - patch_phases(boxes, corners)))), 0, atol=1e-5)


def test_spatial_order_runs_along_the_longer_side():
    xy = np.array([[0.0, 5.0], [9.0, 0.0], [3.0, 1.0], [3.0, 0.0]])  # wider (x: 9) than high (y: 5)
    assert spatial_order(xy).tolist() == [0, 3, 2, 1]
    assert spatial_order(xy[:, ::-1]).tolist() == [0, 3, 2, 1]


def test_weighted_pairs_are_the_boxes_whose_weights_overlap():
    rng = np.random.default_rng(6)
    corners = rng.integers(0, 60, (50, 2))
    weights = np.zeros((10, 10))
    weights[3:7, 3:7] = 1.0  # only a 4 x 4 centre carries weight
    found = {tuple(p) for p in overlapping_pairs(corners, (10, 10), weights)}
    expected = {
        (i, j) for i in range(50) for j in range(i + 1, 50)
        if abs(corners[i, 0] - corners[j, 0]) < 4 and abs(corners[i, 1] - corners[j, 1]) < 4
    }
    assert found == expected and len(expected) > 0
    assert found < {tuple(p) for p in overlapping_pairs(corners, (10, 10))}


def offset_scan(rng, side=16, step=5.0, size=16):
    """Placed ideal patches of a smooth phase object on a side x side raster, each times exp(1j offset)."""
    extent = int(step * side) + 2 * size
    obj = np.exp(1j * gaussian_random_field((extent, extent), 4.0, rng)).astype(np.complex64)
    ticks = size + step * np.arange(side)
    xcoords, ycoords = (a.ravel() for a in np.meshgrid(ticks, ticks))
    patches = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(xcoords), torch.from_numpy(ycoords), size)
    applied = rng.uniform(-np.pi, np.pi, len(xcoords))
    patches = patches * torch.polar(torch.ones(len(applied)), torch.from_numpy(applied).float()).view(-1, 1, 1)
    origin, shape = canvas_frame(xcoords, ycoords, size)
    placed = Stitcher(origin, shape, torch.ones(size, size)).place(patches, torch.from_numpy(xcoords), torch.from_numpy(ycoords))
    return placed, applied


def test_a_large_scan_is_solved_in_tiles_with_the_applied_offsets():
    rng = np.random.default_rng(7)
    placed, applied = offset_scan(rng)
    box = tuple(placed.values.shape[-2:])
    pairs = overlapping_pairs(placed.corners, box)
    products = overlap_products(placed.values, placed.corners, pairs)
    tiled = scan_phases(len(applied), pairs, products, placed.corners, box, tile_patches=16)  # 256 patches: tiles
    whole = scan_phases(len(applied), pairs, products, placed.corners, box, tile_patches=1000)  # one eigenproblem
    for found in (tiled, whole):
        difference = np.angle(np.exp(1j * (found - applied)))
        assert np.abs(np.angle(np.exp(1j * (difference - difference[0])))).max() < 1e-3
    assert np.abs(np.angle(np.exp(1j * (tiled - whole)))).max() < 1e-3


def test_tiles_tolerate_noisy_patches_as_well_as_one_eigenproblem():
    rng = np.random.default_rng(8)
    placed, applied = offset_scan(rng)
    noisy = placed.values + 0.3 * torch.randn(placed.values.shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    box = tuple(noisy.shape[-2:])
    pairs = overlapping_pairs(placed.corners, box)
    products = overlap_products(noisy, placed.corners, pairs)

    def error(found):
        difference = np.exp(1j * (found - applied))
        return float(np.sqrt(np.mean(np.angle(difference * np.conj(np.mean(difference))) ** 2)))

    tiled = error(scan_phases(len(applied), pairs, products, placed.corners, box, tile_patches=16))
    whole = error(scan_phases(len(applied), pairs, products, placed.corners, box, tile_patches=1000))
    assert whole > 1e-3  # the noise does move the offsets
    assert tiled < 1.2 * whole
