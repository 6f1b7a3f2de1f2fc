"""Known answers for ptycho.metrics: alignment recovers what was applied, metrics flag failures."""

import json

import numpy as np
import pytest
from scipy import ndimage

from ptycho import metrics

SIZE = 96


def smooth_field(rng, sigma=2.0, size=SIZE):
    """Periodic smooth random field scaled to [0, 1] (periodic so that Fourier shifts are exact)."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (field - field.min()) / (field.max() - field.min())


@pytest.fixture(scope="module")
def truth():
    rng = np.random.default_rng(1)
    amplitude = 0.5 + 0.5 * smooth_field(rng)  # [0.5, 1]
    phase = -1.0 + 2.0 * smooth_field(rng)  # [-1, 1] rad
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


@pytest.fixture(scope="module")
def coverage():
    rows, cols = np.indices((SIZE, SIZE))
    return np.exp(-((cols - 47.5) ** 2 + (rows - 47.5) ** 2) / (2 * 25.0**2))


def fourier_move(image, dx, dy):
    """Move the content of image by +(dx, dy) px (periodic)."""
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image), (dy, dx))).astype(np.complex64)


def test_fourier_move_helper_moves_a_bright_pixel_by_plus_shift():
    image = np.zeros((32, 32), dtype=np.complex64)
    image[10, 12] = 1.0  # row 10, column 12
    moved = np.abs(fourier_move(image, 3.0, -5.0))
    assert np.unravel_index(int(moved.argmax()), moved.shape) == (5, 15)


# ---- scanned_region -------------------------------------------------------------------------


def test_scanned_region_keeps_pixels_at_or_above_the_fraction_of_the_90th_percentile():
    coverage = np.arange(11.0).reshape(1, 11) * np.ones((3, 1))  # 0 ... 10 along the columns
    level = np.percentile(coverage[coverage > 0], 90)  # 9.1
    region = metrics.scanned_region(coverage, fraction=0.5)
    assert region.dtype == bool
    np.testing.assert_array_equal(region[1], coverage[1] >= 0.5 * level)
    assert metrics.scanned_region(coverage, fraction=1.0).sum() == 3  # only the 10s column


def test_scanned_region_ignores_a_sharp_peak_and_fills_dips():
    coverage = np.ones((30, 30))
    coverage[15, 15] = 50.0  # crowded scan points
    coverage[8, 8] = 0.2  # a dip between scan points
    region = metrics.scanned_region(coverage, fraction=0.5)
    assert region.all()


def test_scanned_region_margin_erodes_by_that_many_pixels():
    coverage = np.zeros((40, 40))
    coverage[10:30, 5:25] = 1.0  # a 20 x 20 square
    region = metrics.scanned_region(coverage, fraction=0.5, margin_px=3)
    expected = np.zeros((40, 40), dtype=bool)
    expected[13:27, 8:22] = True  # 14 x 14
    np.testing.assert_array_equal(region, expected)
    # outside the array counts as not covered
    edge = metrics.scanned_region(np.ones((10, 10)), margin_px=2)
    assert edge.sum() == 36 and edge[2:8, 2:8].all()


def test_scanned_region_rejects_an_unscanned_map():
    with pytest.raises(metrics.MetricsError, match="no pixel was scanned"):
        metrics.scanned_region(np.zeros((8, 8)))


# ---- image_metrics / frc_resolution / data consistency: known numbers -------------------------


def test_image_metrics_known_values():
    rng = np.random.default_rng(0)
    reference = smooth_field(rng, size=32)
    result = metrics.image_metrics(reference + 0.1, reference, data_range=1.0)
    assert result["mae"] == pytest.approx(0.1)
    assert result["rmse"] == pytest.approx(0.1)
    assert result["psnr"] == pytest.approx(20.0)
    assert result["pearson"] == pytest.approx(1.0)


def test_image_metrics_mask_restricts_pixel_metrics():
    rng = np.random.default_rng(0)
    reference = smooth_field(rng, size=32)
    estimate = reference.copy()
    estimate[:, :4] += 5.0  # wrong only outside the mask
    mask = np.zeros_like(reference, dtype=bool)
    mask[:, 4:] = True
    result = metrics.image_metrics(estimate, reference, data_range=1.0, mask=mask)
    assert result["mae"] == 0.0 and result["psnr"] == metrics.PSNR_CAP_DB
    assert result["ssim"] < 0.99  # SSIM sees the whole box


def test_frc_resolution_interpolates_the_first_crossing():
    frequencies = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    curve = np.array([1.0, 0.9, 0.7, 0.3, 0.1, 0.0])
    assert metrics.frc_resolution(frequencies, curve, 0.5) == pytest.approx(1 / 0.25)
    assert metrics.frc_resolution(frequencies, curve, 1 / 7) == pytest.approx(1 / (0.3 + (0.3 - 1 / 7) / 0.2 * 0.1))
    assert np.isnan(metrics.frc_resolution(frequencies, np.ones(6), 0.5))  # never below: not reached, not "Nyquist"
    # a dip in ring 0 does not count; the first crossing after it does
    assert metrics.frc_resolution(frequencies, np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0]), 0.5) == pytest.approx(1 / 0.25)


def test_r_factor_and_normalised_error():
    measured = np.array([[1.0, 2.0], [3.0, 4.0]])
    simulated = np.array([[1.0, 2.0], [3.0, 2.0]])
    assert metrics.r_factor(measured, measured) == 0.0
    assert metrics.normalised_error(measured, measured) == 0.0
    assert metrics.r_factor(measured, simulated) == pytest.approx(2.0 / 10.0)
    assert metrics.normalised_error(measured, simulated) == pytest.approx(np.sqrt(4.0 / 30.0))
    with pytest.raises(metrics.MetricsError, match="shape"):
        metrics.r_factor(measured, simulated[:1])


# ---- compare: alignment known answers --------------------------------------------------------


def assert_perfect(result, part):
    assert result[f"{part}.mae"] == pytest.approx(0.0, abs=1e-6)
    assert result[f"{part}.ssim"] == pytest.approx(1.0, abs=1e-6)
    assert result[f"{part}.pearson"] == pytest.approx(1.0, abs=1e-6)
    assert result[f"{part}.psnr"] > 90.0


def test_identical_images_score_perfectly(truth, coverage):
    result, (frequencies, values) = metrics.compare(truth, truth, coverage)
    for part in ("amplitude", "phase"):
        assert_perfect(result, part)
        assert result[f"{part}.psnr"] == metrics.PSNR_CAP_DB
    np.testing.assert_allclose(values, 1.0, atol=1e-6)
    assert frequencies[0] == 0.0 and frequencies[-1] == pytest.approx(0.5)
    # the curve never drops below a threshold: "not reached", never the best value (2 px)
    assert np.isnan(result["frc.resolution_px_0.5"]) and result["frc.reached_0.5"] is False
    assert np.isnan(result["frc.resolution_px_1_7"]) and result["frc.reached_1_7"] is False
    assert result["region_px"] == int(metrics.scanned_region(coverage).sum())
    # plain floats, ints and bools, all finite except the resolutions not reached
    assert all(type(value) in (float, int, bool) for value in result.values())
    assert all(np.isfinite(value) for key, value in result.items() if not key.startswith("frc.resolution"))


def test_phase_offset_is_removed_with_the_documented_sign(truth, coverage):
    result, _ = metrics.compare(truth * np.exp(0.7j), truth, coverage)
    assert result["alignment.phase_offset_rad"] == pytest.approx(-0.7, abs=1e-6)  # correction applied
    assert_perfect(result, "phase")
    assert_perfect(result, "amplitude")


def test_amplitude_scale_is_removed(truth, coverage):
    result, _ = metrics.compare(truth * 0.5, truth, coverage)
    assert result["alignment.amplitude_scale"] == pytest.approx(2.0, rel=1e-6)
    assert_perfect(result, "amplitude")
    assert_perfect(result, "phase")


@pytest.mark.parametrize("slope_x", [0.05, 0.2])  # 0.2 rad/px wraps many times across the region
def test_phase_ramp_removed_only_when_requested(truth, coverage, slope_x):
    rows, cols = np.indices(truth.shape)
    ramped = truth * np.exp(1j * (slope_x * cols - 0.03 * rows))
    removed, _ = metrics.compare(ramped, truth, coverage, remove_phase_ramp=True)
    assert removed["alignment.ramp_x"] == pytest.approx(-slope_x, abs=1e-4)
    assert removed["alignment.ramp_y"] == pytest.approx(0.03, abs=1e-4)
    assert_perfect(removed, "phase")
    kept, _ = metrics.compare(ramped, truth, coverage)
    assert (kept["alignment.ramp_x"], kept["alignment.ramp_y"]) == (0.0, 0.0)
    assert kept["phase.ssim"] < 0.3


def test_known_subpixel_shift_is_recovered(truth, coverage):
    moved = fourier_move(truth, 2.3, -1.6)  # content at +(2.3, -1.6) px from the truth
    registered, _ = metrics.compare(moved, truth, coverage, register=True)
    assert registered["alignment.shift_x_px"] == pytest.approx(-2.3, abs=0.1)  # the move back
    assert registered["alignment.shift_y_px"] == pytest.approx(1.6, abs=0.1)
    assert registered["amplitude.ssim"] > 0.98 and registered["phase.ssim"] > 0.98
    unregistered, _ = metrics.compare(moved, truth, coverage)
    assert (unregistered["alignment.shift_x_px"], unregistered["alignment.shift_y_px"]) == (0.0, 0.0)
    assert unregistered["amplitude.ssim"] < 0.7 and unregistered["phase.ssim"] < 0.7


def test_all_ambiguities_together_with_noise(truth, coverage):
    rng = np.random.default_rng(5)
    noise = 0.02 * (rng.standard_normal(truth.shape) + 1j * rng.standard_normal(truth.shape))
    reconstruction = 0.5 * np.exp(0.7j) * fourier_move(truth, -3.7, 2.2) + noise
    aligned, alignment = metrics.align(reconstruction, truth, metrics.scanned_region(coverage), register=True)
    assert aligned.shape == truth.shape
    assert alignment.shift_px == pytest.approx((3.7, -2.2), abs=0.1)
    assert alignment.phase_offset_rad == pytest.approx(-0.7, abs=0.02)
    assert alignment.amplitude_scale == pytest.approx(2.0, rel=0.02)
    assert alignment.phase_ramp == (0.0, 0.0)


def test_registration_rejects_a_tiny_region(truth):
    region = np.zeros(truth.shape, dtype=bool)
    region[40:43, 40:43] = True
    with pytest.raises(metrics.MetricsError, match="3 x 3 px"):
        metrics.align(truth, truth, region, register=True)


def test_flat_output_collapse_is_caught_by_pearson_and_ssim(truth, coverage):
    region = metrics.scanned_region(coverage)
    flat = np.full_like(truth, np.mean(np.abs(truth[region])) * np.exp(1j * np.mean(np.angle(truth[region]))))
    result, _ = metrics.compare(flat, truth, coverage)
    assert result["amplitude.pearson"] == 0.0 and result["phase.pearson"] == 0.0
    assert result["amplitude.ssim"] < 0.2 and result["phase.ssim"] < 0.2
    assert result["amplitude.mae"] < 0.1  # modest: MAE alone would not flag the collapse


# ---- FRC ---------------------------------------------------------------------------------------


def test_frc_against_independent_noise_is_low():
    rng = np.random.default_rng(2)
    image = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 1.0, mode="wrap")
    frequencies, values = metrics.frc(image, rng.standard_normal((SIZE, SIZE)))
    assert values.shape == frequencies.shape == (SIZE // 2 + 1,)
    assert np.mean(np.abs(values[2:])) < 0.2
    assert metrics.frc_resolution(frequencies, values, 0.5) > 20.0


def test_frc_resolution_is_coarser_for_stronger_blur():
    rng = np.random.default_rng(2)
    image = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 1.0, mode="wrap")
    noise = 0.05 * rng.standard_normal((SIZE, SIZE))  # blur alone is invisible to FRC; noise reveals it
    resolutions = []
    for sigma in (0.0, 1.0, 2.0):
        blurred = ndimage.gaussian_filter(image, sigma, mode="wrap") if sigma else image
        frequencies, values = metrics.frc(image, blurred + noise)
        resolutions.append(metrics.frc_resolution(frequencies, values, 0.5))
    assert resolutions[0] < resolutions[1] < resolutions[2]
    assert resolutions[0] < 3.0 and resolutions[2] > 4.0


def test_frc_crops_a_rectangle_to_its_centred_square():
    rng = np.random.default_rng(3)
    image = rng.standard_normal((40, 30)) + 1j * rng.standard_normal((40, 30))
    frequencies, values = metrics.frc(image, image)
    assert frequencies.shape == (16,)
    np.testing.assert_allclose(values, 1.0, atol=1e-12)
