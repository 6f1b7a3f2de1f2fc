"""Network + refinement: iterative sweeps started from the network's reconstruction."""

import dataclasses
import json

import numpy as np
import pytest

from ptycho import workflows
from ptycho.iterative.pie import run_pie
from ptycho.config import RefineConfig
from ptycho.data import load_dataset
from ptycho.errors import ConfigError, DataError
from ptycho.reconstruction import load_reconstruction


def test_refinement_improves_the_network_and_counts_its_time(evaluated_run, tmp_path, small_evaluate_config):
    run, report = evaluated_run
    test = load_dataset(run.test_path)
    errors = workflows.refine(
        test, run.folder / "reconstruction.npz", run.folder / "infer_stats.json", RefineConfig(iterations=5, batch_size=16),
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
