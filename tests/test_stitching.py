"""Stitching: exact patches reassemble the object; the canvas origin follows the input frame."""

import numpy as np
import pytest
import torch

from ptycho import physics
from ptycho.simulate import gaussian_random_field
from ptycho.stitching import Stitcher, canvas_frame


def stitch(obj, xcoords, ycoords, size, weights, batch=7):
    origin, shape = canvas_frame(xcoords, ycoords, size)
    stitcher = Stitcher(origin, shape, weights)
    patches = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(xcoords), torch.from_numpy(ycoords), size)
    for start in range(0, len(xcoords), batch):
        part = slice(start, start + batch)
        stitcher.add(stitcher.place(patches[part], torch.from_numpy(xcoords[part]), torch.from_numpy(ycoords[part])))
    stitched, coverage = stitcher.result()
    x0, y0 = origin
    return stitched, coverage, obj[y0 : y0 + shape[0], x0 : x0 + shape[1]]


def central_support(size):
    support = torch.zeros(size, size)
    support[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return support


def test_exact_patches_at_integer_positions_reassemble_the_object_exactly():
    rng = np.random.default_rng(0)
    obj = (rng.random((100, 120)) * np.exp(1j * rng.random((100, 120)))).astype(np.complex64)
    xcoords = np.round(rng.uniform(20, 100, 90))
    ycoords = np.round(rng.uniform(20, 80, 90))
    weights = central_support(32) * torch.rand(32, 32, generator=torch.Generator().manual_seed(1))  # any weights
    stitched, coverage, truth = stitch(obj, xcoords, ycoords, 32, weights)
    covered = coverage > 1e-3
    assert covered.sum() > 3000
    np.testing.assert_allclose(stitched[covered], truth[covered], atol=1e-5)
    assert np.all(stitched[~covered] == 0)


def test_exact_patches_at_subpixel_positions_reassemble_a_smooth_object_closely():
    # Bilinear sampling then bilinear placement blurs by under a pixel: exact for integer
    # positions (above), close for a smooth object.
    rng = np.random.default_rng(1)
    field = gaussian_random_field((100, 100), 4.0, rng)
    obj = ((0.5 + 0.5 * field) * np.exp(1j * gaussian_random_field((100, 100), 4.0, rng))).astype(np.complex64)
    xcoords, ycoords = rng.uniform(20, 80, 120), rng.uniform(20, 80, 120)
    stitched, coverage, truth = stitch(obj, xcoords, ycoords, 32, central_support(32))
    well = coverage > 0.5 * coverage.max()
    assert np.abs(stitched[well] - truth[well]).mean() < 0.01


def test_a_bright_pixel_lands_at_its_input_coordinates():
    # One patch whose centre pixel is bright, placed at (x, y) = (57, 41): the bright canvas
    # pixel [r, c] must satisfy x = x0 + c, y = y0 + r.
    patch = torch.zeros(1, 16, 16, dtype=torch.complex64)
    patch[0, 8, 8] = 1.0
    xcoords, ycoords = np.array([57.0, 30.0]), np.array([41.0, 20.0])
    origin, shape = canvas_frame(xcoords, ycoords, 16)
    stitcher = Stitcher(origin, shape, torch.ones(16, 16))
    stitcher.add(stitcher.place(patch, torch.tensor([57.0]), torch.tensor([41.0])))
    stitched, _ = stitcher.result()
    row, col = np.unravel_index(np.argmax(np.abs(stitched)), stitched.shape)
    assert (origin[0] + col, origin[1] + row) == (57, 41)


def test_positions_outside_the_canvas_are_refused():
    stitcher = Stitcher((0, 0), (40, 40), torch.ones(16, 16))
    with pytest.raises(ValueError, match="outside"):
        stitcher.place(torch.zeros(1, 16, 16, dtype=torch.complex64), torch.tensor([35.0]), torch.tensor([20.0]))
