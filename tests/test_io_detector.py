"""Detector crop and binning: pixel sizes, positions, probe and mask transformed consistently."""

import dataclasses

import numpy as np
import pytest

from io_helpers import amplitudes
from ptycho.config import PrepareConfig, Source
from ptycho.errors import InputWarning
from ptycho.io import detector, ingest
from ptycho.io.raw import RawScan

FINE = 32


def field(x, y):
    """A smooth, band-limited complex object O(x, y) (x = column, y = row, fine pixels), no symmetry."""
    return (0.8 + 0.15 * np.sin(2 * np.pi * x / 23.0 + 0.4)) * np.exp(1j * 0.6 * np.cos(2 * np.pi * (0.7 * y + 0.3 * x) / 19.0))


def probe_at(size, sigma, scale=1.0, shift=(0.0, 0.0)):
    """Gaussian probe sampled on an N-grid of pixel `scale` (fine pixels), centre at pixel N/2 + shift."""
    rows, cols = np.mgrid[0:size, 0:size]
    x = (cols - size / 2) * scale - shift[0]
    y = (rows - size / 2) * scale - shift[1]
    return (40 * np.exp(-(x**2 + y**2) / (2 * sigma**2))).astype(np.complex64)


def raw_scan(probe, x, y, obj, mask=None):
    counts = amplitudes(obj, probe, x, y).astype(np.float64) ** 2
    return RawScan(source="test", pattern_key="patterns", patterns=counts, quantity="intensity", quantity_origin="test",
                   centred=True, xcoords=x, ycoords=y, probe=probe[None], mask=mask,
                   metadata={"object_pixel_size_m": [1e-8, 1e-8], "detector_pixel_size_m": [5e-5, 5e-5]})


def config(**changes):
    return dataclasses.replace(PrepareConfig(source=Source.NPZ, train_file="x"), **changes)


def grid_object(size, scale):
    rows, cols = np.mgrid[0:size, 0:size]
    return field(cols * scale, rows * scale).astype(np.complex64)


def test_crop_gives_coarser_pixels_and_the_coarse_forward_model_explains_it():
    """Crop 32 -> 16: object pixels twice as large, positions halved, Fourier-cropped probe on the coarse grid."""
    x = np.array([30.0, 44.0, 52.0, 60.0])
    y = np.array([28.0, 40.0, 58.0, 36.0])
    raw = raw_scan(probe_at(FINE, 3.0), x, y, grid_object(96, 1.0))
    data, _ = ingest.to_dataset(raw, config(N=16, detector_crop_px=16))
    np.testing.assert_allclose(data.xcoords, x / 2)
    np.testing.assert_allclose(data.ycoords, y / 2)
    assert data.metadata["object_pixel_size_m"] == pytest.approx([2e-8, 2e-8])
    assert data.metadata["detector_pixel_size_m"] == pytest.approx([5e-5, 5e-5])
    # The same object sampled at the coarse pixels, the cropped probe, the coarse positions:
    coarse = amplitudes(grid_object(48, 2.0), data.probe, data.xcoords, data.ycoords)
    assert np.abs(coarse - data.amplitudes).max() < 0.01 * data.amplitudes.max()
    # The probe is the fine one at twice the pixel, times N/N' (module docstring).
    np.testing.assert_allclose(np.abs(data.probe), 2 * np.abs(probe_at(16, 3.0, scale=2.0)), atol=1e-3 * 80)


def test_crop_keeps_a_shifted_probe_where_it_was():
    """Bright-pixel test: a probe peak at (N/2 + 4, N/2 - 6) fine px lands at (N'/2 + 2, N'/2 - 3) coarse px."""
    probe = probe_at(FINE, 1.5, shift=(4.0, -6.0))
    cropped = detector.fourier_crop_probe(probe[None], 16)[0]
    assert np.unravel_index(np.argmax(np.abs(cropped)), cropped.shape) == (8 - 3, 8 + 2)


def test_crop_keeps_the_zero_frequency_centred():
    patterns = np.zeros((1, FINE, FINE))
    patterns[0, FINE // 2, FINE // 2] = 1.0
    assert detector.crop_patterns(patterns, 16)[0, 8, 8] == 1.0


def test_binning_keeps_the_pixel_cuts_the_probe_and_the_window_forward_model_explains_it():
    x = np.array([30.0, 44.0, 52.5, 60.0])
    y = np.array([28.0, 40.0, 58.0, 36.25])
    obj = grid_object(96, 1.0)
    raw = raw_scan(probe_at(FINE, 2.0), x, y, obj)
    data, _ = ingest.to_dataset(raw, config(N=16, detector_bin=2))
    np.testing.assert_array_equal(data.xcoords, x)  # same object pixels
    assert data.metadata["detector_pixel_size_m"] == pytest.approx([1e-4, 1e-4])
    assert data.metadata["object_pixel_size_m"] == pytest.approx([1e-8, 1e-8])
    np.testing.assert_array_equal(data.probe, probe_at(FINE, 2.0)[8:24, 8:24])  # central N/2 window
    counts = amplitudes(obj, probe_at(FINE, 2.0), x, y).astype(float) ** 2
    np.testing.assert_allclose(np.sum(data.amplitudes.astype(float) ** 2, axis=(1, 2)), counts.sum(axis=(1, 2)), rtol=1e-5)
    # Far field of the 16 px window at the same pixels, with the documented offset of binning: the
    # zero frequency sits (b - 1)/(2b) = 1/4 binned pixel before [N'/2, N'/2], a phase ramp on the object.
    rows, cols = np.mgrid[0:96, 0:96]
    ramp = np.exp(-2j * np.pi * 0.25 * (rows + cols) / 16).astype(np.complex64)
    window = amplitudes(obj * ramp, data.probe, x, y)
    assert np.abs(window - data.amplitudes).max() < 0.05 * data.amplitudes.max()
    unshifted = amplitudes(obj, data.probe, x, y)  # the offset is real: without it the misfit is 5 times larger
    assert np.abs(unshifted - data.amplitudes).max() > 0.12 * data.amplitudes.max()
    assert "lost 0.00 %" in data.metadata["detector_bin"]


def test_binning_a_probe_that_does_not_fit_says_how_much_is_lost():
    x, y = np.array([40.0, 50.0]), np.array([40.0, 45.0])
    raw = raw_scan(probe_at(FINE, 6.0), x, y, grid_object(96, 1.0))
    with pytest.warns(InputWarning, match=r"loses \d+\.\d % of sum \|P\|\^2"):
        ingest.to_dataset(raw, config(N=16, detector_bin=2))


def test_masks_follow_crop_and_binning():
    mask = np.ones((FINE, FINE), dtype=bool)
    mask[16, 17] = False
    mask[0, 0] = False  # cropped away
    x, y = np.array([40.0, 50.0]), np.array([40.0, 45.0])
    cropped, _ = ingest.to_dataset(raw_scan(probe_at(FINE, 2.0), x, y, grid_object(96, 1.0), mask), config(N=16, detector_crop_px=16))
    assert not cropped.mask[8, 9] and cropped.mask.sum() == 16 * 16 - 1
    binned, _ = ingest.to_dataset(raw_scan(probe_at(FINE, 2.0), x, y, grid_object(96, 1.0), mask), config(N=16, detector_bin=2))
    assert not binned.mask[8, 8] and not binned.mask[0, 0] and binned.mask.sum() == 16 * 16 - 2
    assert np.all(binned.amplitudes[:, 8, 8] == 0)
