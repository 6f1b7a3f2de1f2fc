"""Network + refinement: iterative sweeps started from the network's reconstruction."""

import dataclasses
import json

import numpy as np
import pytest

from ptycho import workflows
from ptycho.iterative.pie import run_pie
from ptycho.config import BaselineConfig, RefineConfig, RefineStart
from ptycho.data import load_dataset
from ptycho.errors import ConfigError, DataError
from ptycho.iterative.refinement import refine_scan
from ptycho.reconstruction import load_reconstruction, save_reconstruction


def test_refinement_improves_the_network_and_counts_its_time(evaluated_run, tmp_path, small_evaluate_config):
    run, report = evaluated_run
    test = load_dataset(run.test_path)
    errors = workflows.refine(
        test, run.folder / "reconstruction.npz", run.folder / "infer_stats.json", RefineConfig(iterations=5, batch_size=16, engine="sweeps"),
        tmp_path / "refined.npz", tmp_path / "h.csv", tmp_path / "s.json", tmp_path / "r.png",
    )
    refined = load_reconstruction(tmp_path / "refined.npz")
    assert refined.method == "refined-rpie" and len(errors) == 5
    scored = workflows.evaluate(
        test, {"pinn": run.folder / "reconstruction.npz", "refined": tmp_path / "refined.npz"}, {}, small_evaluate_config,
        tmp_path / "m.json", tmp_path / "f.csv", tmp_path / "c.png",
    )
    assert scored["refined"]["data.r_factor"] < scored["pinn"]["data.r_factor"]
    assert scored["refined"]["amplitude.ssim"] > scored["pinn"]["amplitude.ssim"]
    stats = json.loads((tmp_path / "s.json").read_text())
    network_time = json.loads((run.folder / "infer_stats.json").read_text())["wall_time_s"]
    assert stats["network_wall_time_s"] == network_time and stats["wall_time_s"] >= network_time


def test_refinement_starts_from_the_given_object_not_a_flat_one(evaluated_run):
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    network = load_reconstruction(run.folder / "reconstruction.npz")
    settings = RefineConfig(iterations=1, batch_size=16)
    from_network, network_errors = run_pie(test, settings, progress=False, initial=network)
    from_flat, flat_errors = run_pie(test, settings, progress=False)
    assert network_errors[0] < 0.5 * flat_errors[0]  # the first sweep already sees the network's object
    assert not np.allclose(from_network.object, from_flat.object)


def test_an_initial_reconstruction_of_another_scan_is_refused(evaluated_run):
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    network = load_reconstruction(run.folder / "reconstruction.npz")
    moved = dataclasses.replace(network, origin=(network.origin[0] + 3, network.origin[1]))
    with pytest.raises(DataError, match="same scan"):
        run_pie(test, RefineConfig(iterations=1), progress=False, initial=moved)


def test_refine_settings_are_checked_under_their_own_section():
    with pytest.raises(ConfigError, match="refine.iterations"):
        RefineConfig(iterations=0)


# --------------------------------------------------------------------------------------------
# The start and the stop chosen by the data error (ptycho.iterative.refinement)


def corrupted(network, seed=0):
    """The network's reconstruction with a random phase on every pixel: a start that explains nothing."""
    phase = np.random.default_rng(seed).uniform(-np.pi, np.pi, network.object.shape).astype(np.float32)
    return dataclasses.replace(network, object=(network.object * np.exp(1j * phase)).astype(np.complex64))


def test_auto_start_keeps_a_good_network_start_byte_for_byte(evaluated_run):
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    network = load_reconstruction(run.folder / "reconstruction.npz")
    outcome = refine_scan(test, network, RefineConfig(iterations=4, batch_size=16))
    fixed, fixed_errors = run_pie(test, RefineConfig(iterations=4, batch_size=16), progress=False, initial=network)
    assert outcome.start == RefineStart.NETWORK
    assert outcome.trial_errors["network"] < outcome.trial_errors["flat"]
    np.testing.assert_array_equal(outcome.reconstruction.object, fixed.object)
    np.testing.assert_array_equal(outcome.reconstruction.coverage, fixed.coverage)
    assert outcome.errors == fixed_errors and outcome.reconstruction.method == "refined-rpie"


def test_auto_start_falls_back_to_flat_when_the_network_start_is_bad(evaluated_run, tmp_path, small_evaluate_config):
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    bad = corrupted(load_reconstruction(run.folder / "reconstruction.npz"))
    save_reconstruction(bad, tmp_path / "bad.npz")
    settings = RefineConfig(iterations=5, batch_size=16, engine="sweeps")
    workflows.refine(test, tmp_path / "bad.npz", run.folder / "infer_stats.json", settings,
                     tmp_path / "refined.npz", tmp_path / "h.csv", tmp_path / "s.json", tmp_path / "r.png")
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["start"] == "flat" and stats["iterations"] == 5
    assert stats["trial_errors"]["flat"] < stats["trial_errors"]["network"]
    flat, _ = run_pie(test, settings, progress=False)
    forced, _ = run_pie(test, settings, progress=False, initial=bad)
    save_reconstruction(flat, tmp_path / "flat.npz")
    save_reconstruction(forced, tmp_path / "forced.npz")
    np.testing.assert_array_equal(load_reconstruction(tmp_path / "refined.npz").object, flat.object)  # exactly the flat run
    scored = workflows.evaluate(
        test, {"pinn": tmp_path / "forced.npz", "refined": tmp_path / "refined.npz", "baseline": tmp_path / "flat.npz"}, {},
        small_evaluate_config, tmp_path / "m.json", tmp_path / "f.csv", tmp_path / "c.png",
    )
    # The bad start would have cost: five sweeps from it stay far below five from flat.
    assert scored["pinn"]["phase.ssim"] < scored["baseline"]["phase.ssim"] - 0.1
    assert scored["refined"]["phase.ssim"] >= scored["baseline"]["phase.ssim"] - 0.01
    assert scored["refined"]["amplitude.ssim"] >= scored["baseline"]["amplitude.ssim"] - 0.01


def test_fixed_starts_are_obeyed(evaluated_run):
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    bad = corrupted(load_reconstruction(run.folder / "reconstruction.npz"))
    forced = refine_scan(test, bad, RefineConfig(iterations=2, batch_size=16, start="network"))
    reference, _ = run_pie(test, RefineConfig(iterations=2, batch_size=16), progress=False, initial=bad)
    assert forced.start == RefineStart.NETWORK and forced.trial_errors == {}
    np.testing.assert_array_equal(forced.reconstruction.object, reference.object)
    flat = refine_scan(test, bad, RefineConfig(iterations=2, batch_size=16, start="flat"))
    assert flat.start == RefineStart.FLAT and flat.reconstruction.method == "refined-rpie"


def test_auto_iterations_stop_when_the_data_error_stops_falling(evaluated_run):
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    network = load_reconstruction(run.folder / "reconstruction.npz")
    outcome = refine_scan(test, network, RefineConfig(iterations="auto", tolerance=0.02, max_iterations=40, batch_size=16))
    errors = outcome.errors
    assert 2 <= len(errors) < 40 and outcome.stop_reason.startswith("plateau")
    assert errors[-2] - errors[-1] < 0.02 * errors[-2]  # the last sweep fell by less than the tolerance
    assert all(errors[i - 1] - errors[i] >= 0.02 * errors[i - 1] for i in range(2, len(errors) - 1))  # no earlier one did (trial sweeps excepted)
    capped = refine_scan(test, network, RefineConfig(iterations="auto", tolerance=1e-6, max_iterations=3, batch_size=16))
    assert len(capped.errors) == 3 and capped.stop_reason == "max_iterations"
    assert capped.stats()["iterations"] == 3


@pytest.mark.parametrize("tolerance", [0, 1.0, -0.1, 2.0, "fast"])
def test_a_bad_tolerance_is_refused_by_name(tolerance):
    with pytest.raises(ConfigError, match="refine.tolerance"):
        RefineConfig(iterations="auto", tolerance=tolerance)


def test_bad_refine_iterations_and_starts_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"refine.iterations: expected auto or an integer, got 'often'"):
        RefineConfig(iterations="often")
    with pytest.raises(ConfigError, match="refine.start: allowed values are"):
        RefineConfig(start="best")
    with pytest.raises(ConfigError, match="refine.trial_sweeps"):
        RefineConfig(trial_sweeps=0)
    with pytest.raises(ConfigError, match="refine.max_iterations"):
        RefineConfig(max_iterations=0)
    with pytest.raises(ConfigError, match="baseline.iterations"):
        BaselineConfig(iterations="auto")


def test_run_pie_needs_a_number_of_sweeps(evaluated_run):
    run, _ = evaluated_run
    with pytest.raises(ConfigError, match="refine.iterations: run_pie needs a number of sweeps"):
        run_pie(load_dataset(run.test_path), RefineConfig(iterations="auto"), progress=False)
