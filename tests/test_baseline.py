"""Iterative baseline: ePIE/rPIE converge on a small noise-free scan, in the canvas frame.

Measured values quoted below come from the scan of ``SMALL`` (N = 32, 144 positions on an
80 px object, 0.5 px jitter so every position has a sub-pixel remainder, noise-free), with
the seeds fixed here; thresholds sit below them with margin. Runs are shared by module-scoped
fixtures so that the file stays within a few seconds.
"""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from ptycho import metrics, physics
from ptycho.iterative.forward import model_amplitudes
from ptycho.iterative.pie import run_pie
from ptycho.config import Algorithm, BaselineConfig, PrepareConfig
from ptycho.errors import ConfigError
from ptycho.reconstruction import Reconstruction
from ptycho.simulate import simulate_train_test
from ptycho.stitching import canvas_frame, window_geometry

SMALL = PrepareConfig(
    N=32, train_object_px=96, test_object_px=80, step_px=4.0, probe_diameter_px=8.0,
    feature_px=4.0, nphotons=1e6, noise=False,
)


@pytest.fixture(scope="module")
def scan():
    return simulate_train_test(SMALL)[1]


def score(scan, reconstruction, register=False):
    truth = reconstruction.truth_window(scan.object, "test")
    values, _ = metrics.compare(reconstruction.object, truth, reconstruction.coverage, register=register)
    return values


def run(scan, **settings):
    return run_pie(scan, BaselineConfig(**settings), progress=False)


@pytest.fixture(scope="module")
def epie_sequential(scan):
    return run(scan, algorithm="epie", iterations=40, batch_size=1, seed=3)


@pytest.fixture(scope="module")
def rpie_sequential(scan):
    return run(scan, algorithm="rpie", iterations=30, batch_size=1, seed=3)


# --------------------------------------------------------------------------------------------
# Forward model


def test_integer_window_and_shifted_probe_reproduce_the_simulated_patterns(scan):
    # The data were made with bilinear object windows (physics.extract_patches); the baseline
    # uses integer windows and the probe translated by the sub-pixel remainder. Measured
    # normalised amplitude errors: 0.005 with the shift, 0.022 ignoring the remainder; a
    # mirrored sign (remainder -f) is worse still. This fixes the sign of the remainder.
    origin, shape = canvas_frame(scan.xcoords, scan.ycoords, scan.pattern_size)
    frame = Reconstruction(np.zeros(shape, np.complex64), origin, np.zeros(shape, np.float32), "frame")
    truth = torch.from_numpy(frame.truth_window(scan.object, "test"))
    probe = torch.from_numpy(scan.probe)

    def error(xcoords, ycoords):
        predicted = model_amplitudes(truth, origin, xcoords, ycoords, probe).numpy()
        return metrics.normalised_error(scan.amplitudes, predicted)

    _, _, remainder = window_geometry(scan.xcoords, scan.ycoords, scan.pattern_size, origin)
    assert np.abs(remainder).max() > 0.3  # the scan does exercise sub-pixel positions
    rounded_x, rounded_y = scan.xcoords - remainder[:, 0], scan.ycoords - remainder[:, 1]
    with_shift = error(scan.xcoords, scan.ycoords)
    ignored = error(rounded_x, rounded_y)
    mirrored = error(rounded_x - remainder[:, 0], rounded_y - remainder[:, 1])
    assert with_shift < 0.01
    assert with_shift < 0.5 * ignored < mirrored


def test_the_loop_runs_model_amplitudes(scan):
    # Started from the true object with a step too small to move it, the first sweep's error is
    # the misfit of model_amplitudes on the same (calibrated) probe: the loop and the function
    # the tests above pin are one forward model.
    origin, shape = canvas_frame(scan.xcoords, scan.ycoords, scan.pattern_size)
    frame = Reconstruction(np.zeros(shape, np.complex64), origin, np.ones(shape, np.float32), "frame")
    truth = frame.truth_window(scan.object, "test")
    unit, scale = physics.calibrate_probe(scan.probe, scan.amplitudes)
    start = Reconstruction(truth, origin, np.ones(shape, np.float32), "truth", probe=unit * np.float32(scale))
    settings = BaselineConfig(iterations=1, batch_size=16, object_step=1e-12)
    _, errors = run_pie(scan, settings, progress=False, initial=start)
    predicted = model_amplitudes(torch.from_numpy(truth), origin, scan.xcoords, scan.ycoords, torch.from_numpy(unit) * scale)
    assert errors[0] == pytest.approx(metrics.normalised_error(scan.amplitudes, predicted.numpy()), rel=1e-4)
    # and not the model of a neighbouring convention (no sub-pixel probe shift)
    _, _, remainder = window_geometry(scan.xcoords, scan.ycoords, scan.pattern_size, origin)
    rounded = model_amplitudes(
        torch.from_numpy(truth), origin, scan.xcoords - remainder[:, 0], scan.ycoords - remainder[:, 1], torch.from_numpy(unit) * scale
    )
    assert abs(errors[0] - metrics.normalised_error(scan.amplitudes, rounded.numpy())) > 10 * abs(
        errors[0] - metrics.normalised_error(scan.amplitudes, predicted.numpy())
    )


def test_model_amplitudes_refuse_windows_outside_the_canvas():
    obj = torch.ones(40, 40, dtype=torch.complex64)
    probe = torch.ones(16, 16, dtype=torch.complex64)
    with pytest.raises(ValueError, match="outside"):
        model_amplitudes(obj, (0, 0), np.array([34.0]), np.array([20.0]), probe)


def test_window_geometry_rounds_half_up_and_keeps_windows_on_the_canvas():
    xcoords, ycoords = np.array([20.5, 21.49, 30.0]), np.array([40.0, 19.5, 25.2])
    origin, (height, width) = canvas_frame(xcoords, ycoords, 16)
    rows0, cols0, remainder = window_geometry(xcoords, ycoords, 16, origin)
    np.testing.assert_array_equal(cols0 + origin[0] + 8, [21, 21, 30])
    np.testing.assert_array_equal(rows0 + origin[1] + 8, [40, 20, 25])
    np.testing.assert_allclose(remainder, [[-0.5, 0.0], [0.49, -0.5], [0.0, 0.2]], atol=1e-12)
    assert rows0.min() >= 0 and cols0.min() >= 0
    assert rows0.max() + 16 <= height and cols0.max() + 16 <= width


# --------------------------------------------------------------------------------------------
# Convergence


def test_sequential_epie_converges(scan, epie_sequential):
    # measured (40 sweeps, ~1.3 s): error 0.459 -> 0.057 (ratio 0.12); amplitude SSIM 0.944,
    # phase SSIM 0.741 (ePIE's max|P|^2 step is slow on the dim probe tails; rPIE below is faster)
    reconstruction, errors = epie_sequential
    assert len(errors) == 40
    assert errors[-1] < 0.3 * errors[0]
    assert errors[-1] < errors[len(errors) // 2] < errors[0]
    values = score(scan, reconstruction)
    assert values["amplitude.ssim"] > 0.9
    assert values["phase.ssim"] > 0.6


def test_batched_epie_converges(scan):
    # measured (40 sweeps, batches of 24): error ratio 0.125; amplitude SSIM 0.941, phase SSIM 0.719
    reconstruction, errors = run(scan, algorithm="epie", iterations=40, batch_size=24, seed=3)
    assert errors[-1] < 0.3 * errors[0]
    values = score(scan, reconstruction)
    assert values["amplitude.ssim"] > 0.9
    assert values["phase.ssim"] > 0.6


def test_sequential_rpie_converges(scan, rpie_sequential):
    # measured (30 sweeps): error 0.307 -> 0.012 (ratio 0.04); amplitude SSIM 0.998, phase SSIM 0.969
    reconstruction, errors = rpie_sequential
    assert errors[-1] < 0.1 * errors[0]
    values = score(scan, reconstruction)
    assert values["amplitude.ssim"] > 0.97
    assert values["phase.ssim"] > 0.9


def test_batched_rpie_converges(scan):
    # measured (30 sweeps, batches of 24): error ratio 0.039; amplitude SSIM 0.998, phase SSIM 0.926
    reconstruction, errors = run(scan, algorithm="rpie", iterations=30, batch_size=24, seed=3)
    assert errors[-1] < 0.1 * errors[0]
    values = score(scan, reconstruction)
    assert values["amplitude.ssim"] > 0.97
    assert values["phase.ssim"] > 0.85


def test_rpie_with_alpha_one_is_epie():
    # (1 - a)|P|^2 + a max|P|^2 = max|P|^2 at a = 1: the two step weights coincide.
    scan = simulate_train_test(dataclasses.replace(SMALL, test_object_px=48))[1]
    epie, epie_errors = run(scan, algorithm="epie", iterations=3, seed=5)
    rpie, rpie_errors = run(scan, algorithm="rpie", rpie_alpha=1.0, iterations=3, seed=5)
    np.testing.assert_allclose(rpie.object, epie.object, atol=1e-5)
    np.testing.assert_allclose(rpie_errors, epie_errors, rtol=1e-5)


def test_the_same_seed_gives_the_same_result_and_another_seed_another_order():
    scan = simulate_train_test(dataclasses.replace(SMALL, test_object_px=48))[1]
    first, first_errors = run(scan, iterations=2, batch_size=4, seed=11)
    again, again_errors = run(scan, iterations=2, batch_size=4, seed=11)
    other, _ = run(scan, iterations=2, batch_size=4, seed=12)
    np.testing.assert_array_equal(first.object, again.object)
    assert first_errors == again_errors
    assert not np.array_equal(first.object, other.object)


def test_probe_update_recovers_from_a_blurred_probe(scan):
    # measured (20 sequential ePIE sweeps, probe 19 % off): error 0.338 -> 0.127 with the wrong
    # probe kept, 0.284 -> 0.079 when it is refined (batches of 16, 25 sweeps: 0.124 vs 0.062).
    probe = scan.probe
    blurred = ndimage.gaussian_filter(probe.real, 1.0) + 1j * ndimage.gaussian_filter(probe.imag, 1.0)
    wrong = dataclasses.replace(scan, probe=blurred.astype(np.complex64))
    _, fixed_errors = run(wrong, iterations=20, batch_size=1, update_probe=False, seed=3)
    _, refined_errors = run(wrong, iterations=20, batch_size=1, update_probe=True, seed=3)
    assert refined_errors[-1] < 0.4 * refined_errors[0]
    assert refined_errors[-1] < 0.8 * fixed_errors[-1]


# --------------------------------------------------------------------------------------------
# Output frame and format


def test_reconstruction_is_in_the_canvas_frame_without_registration(scan, rpie_sequential):
    reconstruction, _ = rpie_sequential
    origin, shape = canvas_frame(scan.xcoords, scan.ycoords, scan.pattern_size)
    assert reconstruction.origin == origin
    assert reconstruction.object.shape == shape and reconstruction.coverage.shape == shape
    assert reconstruction.object.dtype == np.complex64 and reconstruction.coverage.dtype == np.float32
    assert reconstruction.method == "baseline-rpie"
    # No registration: the object already sits on the truth (also tested by the SSIMs above,
    # which use register=False). With registration the shift found is ~0 (measured (0.0, 0.0) px here,
    # (0.05, 0.05) px for the ePIE run).
    aligned = score(scan, reconstruction, register=False)
    assert aligned["amplitude.ssim"] > 0.97 and aligned["phase.ssim"] > 0.9
    registered = score(scan, reconstruction, register=True)
    assert abs(registered["alignment.shift_x_px"]) <= 0.15
    assert abs(registered["alignment.shift_y_px"]) <= 0.15


def test_coverage_is_the_illumination_and_unlit_pixels_are_zero(scan, rpie_sequential):
    reconstruction, _ = rpie_sequential
    coverage = reconstruction.coverage
    # the map sums |P_j|^2 of the calibrated probe once per position, and the Fourier shift
    # keeps sum |P_j|^2 = sum |P|^2
    expected = scan.n_patterns * float(np.sum(np.abs(reconstruction.probe.astype(np.complex128)) ** 2))
    np.testing.assert_allclose(coverage.sum(), expected, rtol=1e-4)
    unlit = coverage == 0
    assert unlit.any()  # canvas_frame's spill-over margin is never inside an integer window
    assert np.all(reconstruction.object[unlit] == 0)


# --------------------------------------------------------------------------------------------
# Settings


def test_settings_accept_the_algorithm_by_name():
    assert BaselineConfig(algorithm="rpie").algorithm is Algorithm.RPIE
    assert BaselineConfig(algorithm="epie").algorithm is Algorithm.EPIE
    assert BaselineConfig().algorithm is Algorithm.RPIE  # the default of params.yaml


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("algorithm", "dm"),
        ("iterations", 0),
        ("iterations", 2.5),
        ("batch_size", 0),
        ("object_step", 0.0),
        ("probe_step", -1.0),
        ("rpie_alpha", 0.0),
        ("rpie_alpha", 1.5),
        ("update_probe", "yes"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"baseline.{field}"):
        BaselineConfig(**{field: value})


def test_progress_bar_shows_the_error_on_a_terminal_only(capsys, monkeypatch):
    import sys

    scan = simulate_train_test(dataclasses.replace(SMALL, test_object_px=48))[1]
    settings = BaselineConfig(algorithm="epie", iterations=2, batch_size=8)
    run_pie(scan, settings, progress=True)
    assert capsys.readouterr().err == ""  # a log file (CI, dvc queue logs) gets no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run_pie(scan, settings, progress=True)
    shown = capsys.readouterr().err
    assert "baseline-epie" in shown and "error=" in shown


def test_run_pie_refuses_something_else_than_settings(scan):
    with pytest.raises(ConfigError, match="BaselineConfig"):
        run_pie(scan, {"algorithm": "epie"}, progress=False)


def test_on_iteration_sees_each_sweep_and_can_stop_the_run(scan):
    seen = []

    def stop_after_three(sweeps, obj):
        seen.append((sweeps, tuple(obj.shape)))
        return sweeps == 3

    _, errors = run_pie(scan, BaselineConfig(algorithm="rpie", iterations=20, batch_size=16), progress=False, on_iteration=stop_after_three)
    assert [sweeps for sweeps, _ in seen] == [1, 2, 3] and len(errors) == 3
    assert seen[0][1] == canvas_frame(scan.xcoords, scan.ycoords, scan.pattern_size)[1]


# --------------------------------------------------------------------------------------------
# Probe modes, detector mask, the probe returned


def second_mode(scan):
    """A weaker, wider incoherent mode (a ring-free Gaussian) for the scan's probe."""
    size = scan.pattern_size
    rows, cols = np.mgrid[0:size, 0:size] - size / 2
    mode = np.exp(-(rows**2 + cols**2) / (2 * 4.0**2)) * (cols / 4.0)  # an odd (p-like) mode
    power = float(np.sum(np.abs(scan.probe) ** 2))
    return (mode * np.sqrt(0.3 * power / np.sum(mode**2))).astype(np.complex64)


def test_incoherent_modes_add_intensities_and_the_baseline_uses_them(scan):
    modes = np.stack([scan.probe, second_mode(scan)])
    origin, shape = canvas_frame(scan.xcoords, scan.ycoords, scan.pattern_size)
    frame = Reconstruction(np.zeros(shape, np.complex64), origin, np.ones(shape, np.float32), "frame")
    canvas = torch.from_numpy(frame.truth_window(scan.object, "truth"))  # the true object on the canvas
    each = [model_amplitudes(canvas, origin, scan.xcoords, scan.ycoords, torch.from_numpy(mode)) for mode in modes]
    both = model_amplitudes(canvas, origin, scan.xcoords, scan.ycoords, torch.from_numpy(modes))
    torch.testing.assert_close(both, torch.sqrt(each[0] ** 2 + each[1] ** 2))
    mixed = dataclasses.replace(scan, amplitudes=both.numpy().astype(np.float32), probe_modes=modes)
    with_modes, errors_modes = run(mixed, algorithm="rpie", iterations=15, batch_size=16, seed=3)
    _, errors_one = run(dataclasses.replace(mixed, probe_modes=None), algorithm="rpie", iterations=15, batch_size=16, seed=3)
    assert errors_modes[-1] < 0.5 * errors_one[-1]  # measured 0.016 against 0.12
    assert with_modes.probe.shape == (2, scan.pattern_size, scan.pattern_size)


def test_masked_pixels_keep_the_model_modulus_and_leave_the_error(scan):
    corrupted = scan.amplitudes.copy()
    corrupted[:, 14, :] = 3 * corrupted[:, 14, :] + 5  # a hot detector row next to the centre
    mask = np.ones((scan.pattern_size, scan.pattern_size), dtype=bool)
    mask[14, :] = False
    _, clean = run(scan, algorithm="rpie", iterations=10, batch_size=16, seed=3)
    _, unmasked = run(dataclasses.replace(scan, amplitudes=corrupted), algorithm="rpie", iterations=10, batch_size=16, seed=3)
    masked_scan = dataclasses.replace(scan, amplitudes=np.where(mask, corrupted, 0).astype(np.float32), mask=mask)
    masked_rec, masked = run(masked_scan, algorithm="rpie", iterations=10, batch_size=16, seed=3)
    # measured (10 sweeps): error 0.031 clean, 0.035 masked, 0.54 unmasked; amplitude SSIM 0.985, 0.984, 0.29
    assert masked[-1] < 1.5 * clean[-1]
    assert unmasked[-1] > 5 * masked[-1]
    assert score(scan, masked_rec)["amplitude.ssim"] > 0.95


def test_the_reconstruction_carries_the_probe_it_used(scan, rpie_sequential):
    reconstruction, _ = rpie_sequential
    # the file's probe calibrated to the counts: the same shape of probe, a positive real factor
    unit, scale = physics.calibrate_probe(scan.probe, scan.amplitudes)
    np.testing.assert_allclose(reconstruction.probe, unit * scale, rtol=1e-6)
    refined, _ = run(scan, algorithm="rpie", iterations=2, batch_size=16, update_probe=True, seed=3)
    assert refined.probe.shape == scan.probe.shape and not np.array_equal(refined.probe, scan.probe)


@pytest.mark.parametrize("update_probe", [False, True])
def test_patterns_read_by_rows_give_the_same_reconstruction(scan, tmp_path, update_probe):
    """The stage reads the patterns batch by batch from the file: same object, probe and errors, bit for bit."""
    from ptycho.data import load_dataset, save_dataset
    from ptycho.rowfile import RowFile

    save_dataset(scan, tmp_path / "test.npz")
    by_rows = load_dataset(tmp_path / "test.npz", by_rows=True)
    assert isinstance(by_rows.amplitudes, RowFile)
    settings = dict(algorithm="rpie", iterations=3, batch_size=16, update_probe=update_probe)
    (first, first_errors), (second, second_errors) = run(scan, **settings), run(by_rows, **settings)
    assert first_errors == second_errors
    for key in ("object", "coverage", "probe"):
        assert np.array_equal(getattr(first, key), getattr(second, key)), key
