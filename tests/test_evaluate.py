"""The data R-factor: the reconstruction's own probe, the detector mask, the same patterns for every method."""

import dataclasses

import numpy as np
import pytest

from ptycho import scoring, workflows
from ptycho.config import EvaluateConfig, PrepareConfig
from ptycho.reconstruction import Reconstruction, save_reconstruction
from ptycho.simulate import simulate_train_test
from ptycho.stitching import canvas_frame

SMALL = PrepareConfig(N=32, train_object_px=96, test_object_px=80, step_px=4.0, probe_diameter_px=8.0, feature_px=4.0, nphotons=1e6, noise=False)


@pytest.fixture(scope="module")
def scan():
    return simulate_train_test(SMALL)[1]


def truth_on_canvas(scan, scale=1.0, probe=None):
    origin, shape = canvas_frame(scan.xcoords, scan.ycoords, scan.pattern_size)
    frame = Reconstruction(np.zeros(shape, np.complex64), origin, np.ones(shape, np.float32), "frame")
    obj = (frame.truth_window(scan.object, "truth") * scale).astype(np.complex64)
    return Reconstruction(obj, origin, np.ones(shape, np.float32), "test", probe=probe)


def test_the_reconstruction_s_own_probe_is_used(scan):
    exact = scoring.data_consistency(truth_on_canvas(scan), scan)["r_factor"]
    # The same exit waves, split differently between object and probe (what probe refinement can give):
    rescaled = truth_on_canvas(scan, scale=0.5, probe=(2 * scan.probe).astype(np.complex64))
    own = scoring.data_consistency(rescaled, scan)["r_factor"]
    with_data_probe = scoring.data_consistency(dataclasses.replace(rescaled, probe=None), scan)["r_factor"]
    assert exact < 0.02 and own == pytest.approx(exact, abs=1e-4)
    assert with_data_probe > 0.4  # half the amplitude everywhere: R = 0.5


def test_masked_pixels_are_left_out_of_the_r_factor(scan):
    mask = np.ones((scan.pattern_size,) * 2, dtype=bool)
    mask[16, :] = False
    spoiled = scan.amplitudes.copy()
    spoiled[:, 16, :] += 100.0
    clean = scoring.data_consistency(truth_on_canvas(scan), dataclasses.replace(scan, mask=mask))["r_factor"]
    masked = scoring.data_consistency(truth_on_canvas(scan), dataclasses.replace(scan, amplitudes=spoiled, mask=mask))["r_factor"]
    unmasked = scoring.data_consistency(truth_on_canvas(scan), dataclasses.replace(scan, amplitudes=spoiled))["r_factor"]
    assert masked == pytest.approx(clean) and unmasked > 10 * masked


def test_every_method_is_scored_on_the_same_patterns(scan, tmp_path):
    full = truth_on_canvas(scan)
    half_coverage = full.coverage.copy()
    half_coverage[:, : half_coverage.shape[1] // 2] = 0  # this method left the left half out
    partial = dataclasses.replace(full, coverage=half_coverage, object=np.where(half_coverage > 0, full.object, 0).astype(np.complex64))
    save_reconstruction(full, tmp_path / "a.npz")
    save_reconstruction(partial, tmp_path / "b.npz")
    report = workflows.evaluate(
        dataclasses.replace(scan, object=None), {"pinn": tmp_path / "a.npz", "baseline": tmp_path / "b.npz"}, {},
        EvaluateConfig(margin_px=2), tmp_path / "m.json", tmp_path / "frc.csv", tmp_path / "c.png",
    )
    alone = scoring.data_consistency(full, scan)["n_patterns"]
    assert report["pinn"]["data.n_patterns"] == report["baseline"]["data.n_patterns"] < alone
    assert report["pinn"]["data.r_factor"] < 0.02 and report["baseline"]["data.r_factor"] < 0.02
