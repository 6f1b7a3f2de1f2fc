"""Detector crop and binning: pixel sizes, positions, probe and mask transformed consistently."""

import dataclasses

import numpy as np
import pytest

from io_helpers import amplitudes
from ptycho.config import PrepareConfig, Source
from ptycho.errors import DataError, InputWarning
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


def band_limited_scan(size=64, object_px=128, seed=3):
    """A probe and an object whose exit waves' spectra fit in a size/2 crop: the probe's far field is a
    disc of radius 10 frequency px, the object a sum of plane waves of at most 3 cycles per `size` px
    (so every window of it is band-limited too)."""
    rng = np.random.default_rng(seed)
    freq = np.fft.fftshift(np.fft.fftfreq(size, 1 / size))
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    pupil = (np.hypot(fx, fy) <= 10) * np.exp(1j * rng.uniform(0, 2 * np.pi, (size, size)))
    probe = 30 * np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
    rows, cols = np.mgrid[0:object_px, 0:object_px]
    obj = np.full((object_px, object_px), 1.0 + 0j)
    for a, b in rng.integers(-3, 4, (6, 2)):
        obj += 0.1 * complex(*rng.standard_normal(2)) * np.exp(2j * np.pi * (a * cols + b * rows) / size)
    return probe.astype(np.complex64), obj.astype(np.complex64)


def test_cropped_patterns_are_the_far_field_of_the_resampled_probe_and_object():
    """The identity behind a crop: with probe and object resampled to the coarser grid (probe far field
    cropped, object spectrum cut to the same band) and the positions divided by N / N', the forward
    model on N' gives the cropped patterns, to float precision, when the exit waves fit in the crop."""
    probe, obj = band_limited_scan()
    x = np.array([40.0, 52.0, 66.0, 80.0, 94.0])  # even: whole coarse pixels (no interpolation)
    y = np.array([44.0, 70.0, 36.0, 90.0, 60.0])
    fine = amplitudes(obj, probe, x, y) ** 2
    coarse_object = detector.fourier_resample_object(obj, 64, 32)
    assert coarse_object.shape == (64, 64)
    np.testing.assert_allclose(coarse_object, obj[::2, ::2], atol=1e-5)  # O'[c'] = O(2 c'): band-limited, so exact
    coarse = amplitudes(coarse_object, detector.fourier_crop_probe(probe[None], 32)[0], x / 2, y / 2) ** 2
    cropped = detector.crop_patterns(fine, 32)
    assert np.abs(coarse - cropped).max() < 1e-5 * cropped.max()
    # A wrong convention shows: the object sampled at odd fine pixels, or the positions not scaled.
    shifted = amplitudes(np.roll(obj, -1, axis=(0, 1))[::2, ::2].copy(), detector.fourier_crop_probe(probe[None], 32)[0], x / 2, y / 2) ** 2
    assert np.abs(shifted - cropped).max() > 1e-2 * cropped.max()


def test_resampling_keeps_a_bright_pixel_where_it_was_and_trims_to_whole_coarse_pixels():
    obj = np.ones((101, 96), dtype=np.complex64)
    smooth = np.exp(-((np.mgrid[0:101, 0:96][0] - 40.0) ** 2 + (np.mgrid[0:101, 0:96][1] - 60.0) ** 2) / 50.0)
    coarse = detector.fourier_resample_object(obj + smooth, 64, 32)
    assert coarse.shape == (50, 48)  # the 101st row holds no coarse pixel centre
    assert np.unravel_index(np.argmax(np.abs(coarse)), coarse.shape) == (20, 30)
    assert np.abs(coarse[0, 0] - 1) < 1e-3  # a transmission keeps its level (no N/N' factor)
    assert detector.fourier_resample_object(obj, 64, 48).shape == (75, 72)  # k = 4/3: sides multiples of 3


def test_auto_crop_keeps_the_share_asked_for_and_no_more_than_it_needs():
    mean = np.zeros((64, 64))
    mean[32, 32] = 1 - 1e-3
    mean[32 - 10, 32] = 1e-3  # ten rows above the centre: an 18 px crop (rows 23 ... 40) misses it, 20 px keeps it
    assert detector.auto_crop_size(mean, 0.99, 16) == (16, pytest.approx(0.999))
    assert detector.auto_crop_size(mean, 0.9999, 16) == (20, pytest.approx(1.0))
    assert detector.auto_crop_size(np.ones((64, 64)), 0.9999, 16) == (64, 1.0)  # nothing to spare: no crop


def test_auto_crop_of_a_file_is_recorded_and_resamples_its_reference_object():
    probe, obj = band_limited_scan()
    x = np.array([40.0, 52.0, 66.0, 80.0, 94.0])
    y = np.array([44.0, 70.0, 36.0, 90.0, 60.0])
    raw = dataclasses.replace(raw_scan(probe, x, y, obj), object=obj)
    data, _ = ingest.to_dataset(raw, config(N=64, detector_crop_px="auto", detector_crop_share=0.999999))
    counts = amplitudes(obj, probe, x, y).astype(np.float64) ** 2
    crop = data.pattern_size
    kept = detector.crop_patterns(counts, crop).sum() / counts.sum()
    smaller = detector.crop_patterns(counts, crop - 2).sum() / counts.sum()
    assert crop <= 32 and kept >= 0.999999 > smaller  # the disc of radius 10 + 3 cycles of object fit in 32 px
    assert data.metadata["detector_crop_px"].startswith(f"64 -> {crop} (auto: keeps")
    assert "reference object Fourier-resampled" in data.metadata["detector_crop_px"]
    np.testing.assert_allclose(data.object, detector.fourier_resample_object(obj, 64, crop))
    np.testing.assert_allclose(data.xcoords, x * crop / 64)
    with pytest.raises(DataError, match=r"with detector_crop_px: auto, N is the size before the crop"):
        ingest.to_dataset(raw, config(N=32, detector_crop_px="auto"))


def test_a_cropped_simulation_is_explained_by_its_resampled_probe_and_object():
    """The default simulation (aperture probe, Gaussian random field) cropped at prepare: the test scan's
    stored probe, object and positions re-simulate its patterns (a field that is not band-limited:
    0.16 % of the peak measured at 32 px; whole coarse-pixel positions, so no interpolation)."""
    from ptycho import workflows
    from ptycho.simulate import simulate_train_test

    prepare = PrepareConfig(train_object_px=120, test_object_px=100, noise=False, jitter_px=0.0, detector_crop_px=32)
    train, test = workflows.crop_simulated(*simulate_train_test(prepare), prepare)
    assert train.pattern_size == test.pattern_size == 32 and test.object.shape == (50, 50)
    assert test.metadata["detector_crop_px"].startswith("64 -> 32 (prepare.detector_crop_px)")
    counts = test.amplitudes.astype(np.float64) ** 2
    resimulated = amplitudes(test.object, test.probe, test.xcoords, test.ycoords).astype(np.float64) ** 2
    assert np.abs(resimulated - counts).max() < 0.005 * counts.max()
    auto = dataclasses.replace(prepare, detector_crop_px="auto")
    train, test = workflows.crop_simulated(*simulate_train_test(auto), auto)
    assert 16 <= train.pattern_size == test.pattern_size < 64 and "auto: keeps" in test.metadata["detector_crop_px"]
