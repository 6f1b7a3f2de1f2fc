"""Data that ``ptycho.simulate`` did not make (``foreign_data``): probe units, probe window, DAG."""

import dataclasses
import warnings

import numpy as np
import pytest

from foreign_data import build_scan, defocused_ring_probe, write_scan
from ptycho import physics, scoring, workflows
from ptycho.iterative.pie import run_pie
from ptycho.iterative.probe_refinement import refine_probe
from ptycho.bundle import load_bundle
from ptycho.config import BaselineConfig, EvaluateConfig, InferConfig, ModelConfig, PrepareConfig, RefineConfig, Source, TrainConfig
from ptycho.data import PtychoDataset, load_dataset
from ptycho.errors import ConfigError

FAST_TRAIN = TrainConfig(epochs=3, batch_size=16, learning_rate=2e-3, early_stopping_patience=20, seed=3)
FAST_MODEL = ModelConfig(n_filters_scale=0.25, unrolled_sweeps=0)


def as_dataset(arrays: dict, probe_factor: float = 1.0) -> PtychoDataset:
    return PtychoDataset(
        amplitudes=arrays["diffraction"], xcoords=arrays["xcoords"], ycoords=arrays["ycoords"],
        probe=(arrays["probeGuess"] * np.float32(probe_factor)).astype(np.complex64), object=arrays["objectGuess"],
        scan_index=np.arange(len(arrays["xcoords"])), metadata={},
    )


def test_the_probe_window_follows_a_defocused_probe():
    probe = defocused_ring_probe(32, 24.0)
    assert physics.window_share(probe, 16) < 0.5  # most of the intensity lies outside N/2
    window = physics.probe_window(probe, 0.99)
    assert window > 16 and physics.window_share(probe, window) >= 0.99
    assert physics.window_share(probe, window - 2) < 0.99  # the smallest such window
    focused = np.zeros((32, 32), np.complex64)
    focused[14:18, 14:18] = 1.0
    assert physics.probe_window(focused, 0.99) == 16  # never below N/2


def test_probe_scale_estimate_is_exact_for_a_unit_object():
    # With |O| = 1 under the probe, sum(A**2) = s**2 sum(|P|**2) exactly (Parseval).
    probe = defocused_ring_probe(32, 20.0)
    amplitudes = np.abs(np.fft.fftshift(np.fft.fft2(7.5 * probe, norm="ortho")))[None].repeat(3, axis=0)
    for units in (1e-3, 1.0, 1e3):
        unit_probe, scale = physics.calibrate_probe(probe * units, amplitudes)
        assert np.sum(np.abs(unit_probe.astype(np.complex128)) ** 2) == pytest.approx(1.0, rel=1e-6)
        np.testing.assert_allclose(scale * unit_probe, 7.5 * probe, rtol=1e-5, atol=1e-5 * 7.5)


@pytest.fixture(scope="module")
def foreign_pair():
    return build_scan(size=32, n_per_side=10, step_px=5, seed=1), build_scan(size=32, n_per_side=6, step_px=5, seed=2)


def test_probe_units_do_not_change_the_reconstructions_or_metrics(foreign_pair, tmp_path):
    # Units 2**-10, 1 and 2**10 (about 1e-3 and 1e3): powers of two scale a float exactly, so
    # any use of the file's units anywhere downstream would show as a difference here, while
    # training (chaotic in its last bits) stays comparable bit for bit.
    train_arrays, test_arrays = foreign_pair
    results = {}
    for factor in (2.0**-10, 1.0, 2.0**10):
        folder = tmp_path / f"x{factor:g}"
        train, test = as_dataset(train_arrays, factor), as_dataset(test_arrays, factor)
        workflows.train(train, FAST_MODEL, FAST_TRAIN, folder / "wts.h5.zip", folder / "h.csv", folder / "m.json", folder / "ck")
        network = workflows.infer(test, folder / "wts.h5.zip", InferConfig(), folder / "net.npz", folder / "net.png", folder / "net.json")
        baseline, _ = run_pie(test, BaselineConfig(algorithm="rpie", iterations=5, batch_size=16), progress=False)
        r_factors = [scoring.data_consistency(r, test)["r_factor"] for r in (network, baseline)]
        results[factor] = (network, baseline, load_bundle(folder / "wts.h5.zip").probe_scale, r_factors)
    reference = results[1.0]
    for network, baseline, probe_scale, r_factors in results.values():
        assert probe_scale == reference[2]  # the calibration absorbs the units
        np.testing.assert_array_equal(network.object, reference[0].object)
        np.testing.assert_array_equal(network.probe, reference[0].probe)
        np.testing.assert_array_equal(baseline.object, reference[1].object)
        assert r_factors == reference[3]
    assert reference[3][0] < 0.5  # and the network did learn: its data R-factor after 3 epochs


def test_baseline_calibration_absorbs_decimal_probe_units(foreign_pair):
    # 1e-3 and 1e3 are not exact in floating point; rPIE converges, so the rounding stays small.
    _, test_arrays = foreign_pair
    objects = [
        run_pie(as_dataset(test_arrays, factor), BaselineConfig(algorithm="rpie", iterations=10, batch_size=16), progress=False)[0].object
        for factor in (1e-3, 1.0, 1e3)
    ]
    for found in objects:
        np.testing.assert_allclose(found, objects[1], atol=1e-4 * np.abs(objects[1]).max())


def test_a_foreign_scan_goes_through_the_pipeline_and_the_network_learns(tmp_path):
    # Canonical NPZ files written by the independent builder (discs, a defocused ring probe
    # stored with max |P| = 1, whole-pixel positions) through prepare (source npz) -> train ->
    # infer -> refine, beside rPIE, scored by evaluate. Before the probe calibration the
    # network's data R-factor on such data was 0.99 (it could not reach the counts).
    write_scan(tmp_path / "train_in.npz", size=32, n_per_side=14, step_px=5, seed=1)
    write_scan(tmp_path / "test_in.npz", size=32, n_per_side=8, step_px=5, seed=2)
    prepare = PrepareConfig(source=Source.NPZ, N=32, train_file=str(tmp_path / "train_in.npz"), test_file=str(tmp_path / "test_in.npz"))
    train, test = workflows.prepare(prepare, tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "preview.png")
    summary = workflows.train(
        train, FAST_MODEL, dataclasses.replace(FAST_TRAIN, epochs=10), tmp_path / "wts.h5.zip",
        tmp_path / "h.csv", tmp_path / "m.json", tmp_path / "ck",
    )
    bundle = load_bundle(tmp_path / "wts.h5.zip")
    assert bundle.architecture.window_px == 32  # the ring probe needs the whole window (N/2 holds 42 %)
    history = summary.history
    assert history[-1]["val_loss"] < history[0]["val_loss"]  # it trains
    workflows.infer(test, tmp_path / "wts.h5.zip", InferConfig(), tmp_path / "net.npz", tmp_path / "net.png", tmp_path / "net.json")
    workflows.refine(test, tmp_path / "net.npz", tmp_path / "net.json", RefineConfig(iterations=5, engine="sweeps"), tmp_path / "ref.npz",
                     tmp_path / "rh.csv", tmp_path / "rs.json", tmp_path / "ref.png")
    workflows.baseline(test, BaselineConfig(iterations=30), tmp_path / "base.npz", tmp_path / "bh.csv", tmp_path / "bs.json", tmp_path / "base.png")
    report = workflows.evaluate(
        test, {"pinn": tmp_path / "net.npz", "refined": tmp_path / "ref.npz", "baseline": tmp_path / "base.npz"}, {},
        EvaluateConfig(), tmp_path / "metrics.json", tmp_path / "frc.csv", tmp_path / "cmp.png",
    )
    network, refined, baseline = report["pinn"], report["refined"], report["baseline"]
    # Floors measured on this run (closing note of issue 8: network R-factor 0.21, amplitude SSIM
    # 0.39; refined 0.88; rPIE-30 0.98), with a margin. The network alone is still far from rPIE
    # here; five refinement sweeps from it close most of the gap.
    assert network["data.r_factor"] < 0.3
    assert network["amplitude.ssim"] > 0.3
    assert baseline["amplitude.ssim"] > 0.9
    assert refined["amplitude.ssim"] > baseline["amplitude.ssim"] - 0.15
    assert refined["data.r_factor"] < network["data.r_factor"]
    # Issue 17: network + 5 sweeps (refine, start chosen by the data error) is at least as good as
    # 5 rPIE sweeps from flat, with 0.01 SSIM slack.
    workflows.baseline(test, BaselineConfig(iterations=5), tmp_path / "base5.npz", tmp_path / "b5h.csv", tmp_path / "b5s.json", tmp_path / "b5.png")
    five = workflows.evaluate(
        test, {"pinn": tmp_path / "net.npz", "refined": tmp_path / "ref.npz", "baseline": tmp_path / "base5.npz"}, {},
        EvaluateConfig(), tmp_path / "metrics5.json", tmp_path / "frc5.csv", tmp_path / "cmp5.png",
    )
    for key in ("amplitude.ssim", "phase.ssim"):
        assert five["refined"][key] >= five["baseline"][key] - 0.01, key


def probe_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """|<a, b>| / (|a| |b|): 1 for the same probe up to a global complex factor."""
    return float(abs(np.vdot(a, b)) / np.linalg.norm(a) / np.linalg.norm(b))


def test_prepare_refines_a_wrong_probe_guess_on_the_training_scan(tmp_path):
    arrays = build_scan(size=32, n_per_side=14, step_px=5, spot_diameter_px=24.0, seed=3)
    true_probe = arrays["probeGuess"].copy()
    arrays["probeGuess"] = defocused_ring_probe(32, 16.0)  # a starting guess: another defocus
    np.savez(tmp_path / "scan.npz", **arrays)
    guess_similarity = probe_similarity(true_probe, arrays["probeGuess"])
    assert guess_similarity < 0.85

    kept_config = PrepareConfig(source=Source.NPZ, train_file=str(tmp_path / "scan.npz"), N=32, input_checks="warn")
    with pytest.warns(UserWarning):  # the guess is not on the counts' scale
        kept, _ = workflows.prepare(kept_config, tmp_path / "k-train.npz", tmp_path / "k-test.npz", tmp_path / "k.png")
    np.testing.assert_array_equal(kept.probe, arrays["probeGuess"])
    assert "probe_refined" not in kept.metadata

    config = dataclasses.replace(kept_config, probe_refinement_sweeps=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refined probe is on the counts' scale: no probe-scale warning
        workflows.prepare(config, tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "preview.png")
    train, test = load_dataset(tmp_path / "train.npz"), load_dataset(tmp_path / "test.npz")
    assert probe_similarity(true_probe, train.probe) > 0.98  # from 0.80
    np.testing.assert_array_equal(train.probe, test.probe)  # the instrument's probe, refined on the training scan
    record = train.metadata["probe_refined"]
    assert record["sweeps"] == 30 and record["error_last_sweep"] < 0.5 * record["error_first_sweep"]
    assert test.metadata["probe_refined"] == record


def test_probe_refinement_sweeps_must_be_a_count():
    with pytest.raises(ConfigError, match="prepare.probe_refinement_sweeps"):
        PrepareConfig(probe_refinement_sweeps=-1)


def test_probe_refinement_keeps_incoherent_modes():
    arrays = build_scan(size=32, n_per_side=8, step_px=5, spot_diameter_px=24.0, seed=4)
    modes = np.stack([arrays["probeGuess"], 0.2 * defocused_ring_probe(32, 16.0)]).astype(np.complex64)
    data = dataclasses.replace(as_dataset(arrays), probe_modes=modes)
    train, test = refine_probe(data, data, sweeps=3)
    for refined in (train, test):
        assert refined.probe_modes.shape == (2, 32, 32)
        np.testing.assert_array_equal(refined.probe, refined.probe_modes[0])
        assert refined.metadata["probe_refined"]["sweeps"] == 3
    assert not np.array_equal(train.probe_modes[1] / np.linalg.norm(train.probe_modes[1]), modes[1] / np.linalg.norm(modes[1]))
