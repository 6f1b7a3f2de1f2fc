"""Simulated data obey the forward model of DESIGN.md §2 and the photon budget."""

import dataclasses

import numpy as np
import pytest
import torch

from ptycho import physics, simulate
from ptycho.config import ObjectKind, PrepareConfig, ProbeKind, ScanKind

SMALL = PrepareConfig(N=32, train_object_px=80, test_object_px=64, step_px=6.0, probe_diameter_px=12.0, nphotons=1e4, seed=3)


def forward_numpy(dataset):
    """Independent numpy forward model for integer-free positions: P * O window, centred FFT."""
    size = dataset.pattern_size
    amplitudes = []
    for x, y in zip(dataset.xcoords, dataset.ycoords):
        patch = physics.extract_patches(torch.from_numpy(dataset.object), torch.tensor([x]), torch.tensor([y]), size)[0].numpy()
        field = np.fft.fftshift(np.fft.fft2(dataset.probe * patch, norm="ortho"))
        amplitudes.append(np.abs(field))
    return np.array(amplitudes)


def test_noise_free_patterns_are_exactly_the_forward_model():
    train, _ = simulate.simulate_train_test(dataclasses.replace(SMALL, noise=False))
    np.testing.assert_allclose(train.amplitudes, forward_numpy(train), rtol=1e-4, atol=1e-3)


def test_integer_position_patch_is_a_plain_window():
    train, _ = simulate.simulate_train_test(dataclasses.replace(SMALL, noise=False, jitter_px=0.0))
    x, y = train.xcoords[0], train.ycoords[0]
    assert x == int(x) and y == int(y)
    half = train.pattern_size // 2
    window = train.object[int(y) - half : int(y) + half, int(x) - half : int(x) + half]
    expected = np.abs(np.fft.fftshift(np.fft.fft2(train.probe * window, norm="ortho")))
    np.testing.assert_allclose(train.amplitudes[0], expected, rtol=1e-4, atol=1e-3)


def test_mean_photon_count_matches_nphotons():
    train, test = simulate.simulate_train_test(SMALL)
    counts = (train.amplitudes.astype(np.float64) ** 2).sum(axis=(1, 2))
    assert counts.mean() == pytest.approx(SMALL.nphotons, rel=0.01)
    # same probe and photon scale on the test object: same order of magnitude, not exactly equal
    test_counts = (test.amplitudes.astype(np.float64) ** 2).sum(axis=(1, 2))
    assert 0.5 * SMALL.nphotons < test_counts.mean() < 2.0 * SMALL.nphotons


def test_noisy_counts_are_poisson_around_the_forward_model():
    train, _ = simulate.simulate_train_test(SMALL)
    counts = train.amplitudes.astype(np.float64) ** 2
    assert np.allclose(counts, np.round(counts), atol=1e-2)  # integer photon counts
    expected = forward_numpy(train) ** 2
    # Poisson: mean of (k - lambda) is 0 and the variance equals lambda; pooled over all pixels.
    residual = counts - expected
    assert abs(residual.sum()) < 4.0 * np.sqrt(expected.sum())
    bright = expected > 20
    standardised = residual[bright] / np.sqrt(expected[bright])
    assert standardised.var() == pytest.approx(1.0, abs=0.1)


def test_same_seed_same_data_and_train_test_objects_differ():
    first_train, first_test = simulate.simulate_train_test(SMALL)
    second_train, _ = simulate.simulate_train_test(SMALL)
    np.testing.assert_array_equal(first_train.amplitudes, second_train.amplitudes)
    np.testing.assert_array_equal(first_train.xcoords, second_train.xcoords)
    overlap = first_train.object[: first_test.object.shape[0], : first_test.object.shape[1]]
    assert np.abs(overlap - first_test.object).mean() > 0.05
    np.testing.assert_array_equal(first_train.probe, first_test.probe)


@pytest.mark.parametrize("kind", list(ObjectKind))
def test_objects_have_structured_amplitude_and_phase_in_range(kind):
    obj = simulate.make_object(kind, 96, (0.4, 1.0), 1.5, 5.0, np.random.default_rng(0))
    amplitude, phase = np.abs(obj), np.angle(obj)
    assert obj.dtype == np.complex64 and obj.shape == (96, 96)
    assert amplitude.min() >= 0.4 - 1e-6 and amplitude.max() <= 1.0 + 1e-6
    assert np.abs(phase).max() <= 1.5 + 1e-6
    assert amplitude.std() > 0.05 and phase.std() > 0.1
    assert abs(np.corrcoef(amplitude.ravel(), phase.ravel())[0, 1]) < 0.9  # two fields, not one


@pytest.mark.parametrize("kind", list(ScanKind))
def test_scans_stay_inside_the_object_and_follow_the_step(kind):
    rng = np.random.default_rng(1)
    xcoords, ycoords = simulate.make_scan(kind, 128, 32, 8.0, 1.0, rng)
    assert len(xcoords) > 50
    for coords in (xcoords, ycoords):
        assert coords.min() - 16 >= 0 and coords.max() + 15 <= 127
    if kind is not ScanKind.RANDOM:
        positions = np.stack([xcoords, ycoords], 1)
        distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1) + 1e9 * np.eye(len(xcoords))
        assert 5.0 < np.median(distances.min(axis=1)) < 11.0


def test_aperture_probe_has_rings_and_gaussian_has_none():
    aperture = np.abs(simulate.make_probe(ProbeKind.APERTURE, 64, 16.0))
    profile = aperture[32, 32:]
    minima = [r for r in range(1, 30) if profile[r] < profile[r - 1] and profile[r] < profile[r + 1]]
    assert len(minima) >= 2  # dark rings between the central lobe and the side lobes
    assert 6 <= minima[0] <= 10  # first zero at about diameter / 2 = 8 px
    gaussian = np.abs(simulate.make_probe(ProbeKind.GAUSSIAN, 64, 16.0))[32, 32:]
    assert np.all(np.diff(gaussian) <= 1e-7)
    assert gaussian[8] == pytest.approx(0.5, abs=0.02)  # FWHM 16 px


def test_default_probe_keeps_its_intensity_inside_the_predicted_window():
    # The network predicts the central N/2 x N/2 window; intensity outside it cannot be explained.
    config = PrepareConfig()
    intensity = np.abs(simulate.make_probe(config.probe_kind, config.N, config.probe_diameter_px)) ** 2
    quarter = config.N // 4
    inside = intensity[quarter : 3 * quarter, quarter : 3 * quarter].sum()
    assert inside / intensity.sum() > 0.99


def test_scan_kind_given_as_a_string_is_that_scan_not_a_fallback():
    rng = lambda: np.random.default_rng(0)  # noqa: E731 - the same draws for each call
    for kind in ScanKind:
        by_name = simulate.make_scan(kind.value, 80, 32, 6.0, 0.5, rng())
        by_member = simulate.make_scan(kind, 80, 32, 6.0, 0.5, rng())
        np.testing.assert_array_equal(by_name[0], by_member[0])
    grid_x, _ = simulate.make_scan("grid", 80, 32, 6.0, 0.0, rng())
    spiral_x, _ = simulate.make_scan("spiral", 80, 32, 6.0, 0.0, rng())
    assert grid_x.shape != spiral_x.shape or not np.array_equal(grid_x, spiral_x)


@pytest.mark.parametrize(
    "call",
    [
        lambda: simulate.make_scan("fermat", 80, 32, 6.0, 0.5, np.random.default_rng(0)),
        lambda: simulate.make_probe("airy", 32, 8.0),
        lambda: simulate.make_object("noise", 64, (0.5, 1.0), 1.0, 4.0, np.random.default_rng(0)),
        lambda: simulate.make_scan(None, 80, 32, 6.0, 0.5, np.random.default_rng(0)),
    ],
    ids=["scan", "probe", "object", "none"],
)
def test_unknown_kind_is_an_error_not_a_fallback(call):
    from ptycho.errors import ConfigError

    with pytest.raises(ConfigError, match="allowed values are"):
        call()
