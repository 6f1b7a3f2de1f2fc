"""The unrolled family (``ptycho.nn.unrolled``): untrained it is plain rPIE, training lowers the
data loss, and the learned part generalises to another scan of the same instrument."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from ptycho import physics, workflows
from ptycho.bundle import load_bundle, save_bundle
from ptycho.config import BaselineConfig, RefineConfig
from ptycho.errors import ConfigError, DataError
from ptycho.model import Architecture, build_models
from ptycho.data import load_dataset
from ptycho.inference import reconstruct
from ptycho.iterative.forward import model_amplitudes
from ptycho.iterative.pie import PieRun
from ptycho.reconstruction import load_reconstruction
from ptycho.nn.unrolled import CanvasScan, UnrolledSettings, UnrolledSweeps, reconstruct_unrolled, train_unrolled


def data_error(reconstruction, data) -> float:
    """sqrt(Σ (|F| - A)² / Σ A²) of a canvas reconstruction against the scan's patterns."""
    model = model_amplitudes(torch.from_numpy(reconstruction.object), reconstruction.origin, data.xcoords, data.ycoords,
                             torch.from_numpy(reconstruction.probe)).numpy()
    return float(np.sqrt(np.sum((model - data.amplitudes) ** 2) / np.sum(data.amplitudes**2)))


@pytest.fixture(scope="module")
def scans(trained_run, small_infer_config):
    train, test = load_dataset(trained_run.train_path), load_dataset(trained_run.test_path)
    bundle = load_bundle(trained_run.bundle_path)
    networks = [reconstruct(bundle, data, small_infer_config, trained_run.bundle_path) for data in (train, test)]
    return train, test, bundle, networks


def test_an_untrained_model_is_exactly_plain_rpie(scans):
    """Correctors start at zero, steps at 1, momenta at 0: K steps are K rPIE sweeps of the engine
    (same batches, same random orders), from flat and from the network."""
    _, test, bundle, (_, network) = scans
    unit_probe, probe_scale = physics.calibrate_probe(test.probe, test.amplitudes)
    model = UnrolledSweeps(UnrolledSettings(sweeps=3, hidden=8, batch_size=16, seed=1))
    settings = BaselineConfig(iterations=3, batch_size=16, seed=1)
    # from flat the engine uses the data's calibrated probe, from the network the network's
    for start, probe in ((None, unit_probe * probe_scale), (network, bundle.probe)):
        scan = CanvasScan(test, probe)
        unrolled = reconstruct_unrolled(model, scan, scan.start(start), seed=1)
        run = PieRun(test, settings, initial=start)
        for _ in range(3):
            run.sweep()
        expected = run.result().object
        assert np.abs(unrolled.object - expected).max() < 1e-5 * np.abs(expected).max()


def test_masked_detector_pixels_are_left_out_as_the_engine_does(scans):
    """A detector mask: the untrained model still equals the engine, and the masked pixels' (corrupted) values change nothing."""
    _, test, bundle, (_, network) = scans
    mask = np.ones((test.pattern_size,) * 2, dtype=bool)
    mask[10:14, 3:9] = False
    corrupted = test.amplitudes.copy()
    corrupted[:, ~mask] = 1e4  # hot pixels, masked
    masked = dataclasses.replace(test, mask=mask, amplitudes=corrupted)
    clean = dataclasses.replace(test, mask=mask)
    model = UnrolledSweeps(UnrolledSettings(sweeps=2, hidden=0, batch_size=16, seed=1))
    results = [reconstruct_unrolled(model, CanvasScan(data, bundle.probe), CanvasScan(data, bundle.probe).start(network)).object
               for data in (masked, clean)]
    np.testing.assert_array_equal(results[0], results[1])
    run = PieRun(masked, BaselineConfig(iterations=2, batch_size=16, seed=1), initial=network)
    run.sweep()
    run.sweep()
    expected = run.result().object
    assert np.abs(results[0] - expected).max() < 1e-5 * np.abs(expected).max()


def test_training_lowers_the_loss_and_the_learned_schedule_carries_to_another_scan(scans):
    train, test, bundle, (network_train, network_test) = scans
    scan_train, scan_test = CanvasScan(train, bundle.probe), CanvasScan(test, bundle.probe)
    torch.manual_seed(1)
    model = UnrolledSweeps(UnrolledSettings(sweeps=4, hidden=0, batch_size=16, steps=40))
    before = reconstruct_unrolled(model, scan_test, scan_test.start(network_test))
    info = train_unrolled(model, scan_train, [scan_train.start(network_train), scan_train.start(None)])
    assert all(last < first for first, last in zip(info["loss_first"], info["loss_last"]))
    assert not torch.allclose(model.momentum, torch.zeros(4)) and not torch.allclose(model.log_steps, torch.zeros(4))
    after = reconstruct_unrolled(model, scan_test, scan_test.start(network_test))
    # the test scan was never seen in training: its data error falls below that of 4 plain sweeps
    assert data_error(after, test) < 0.95 * data_error(before, test)


def test_the_correctors_get_gradients_and_leave_uncovered_pixels_alone(scans):
    train, _, bundle, (network_train, _) = scans
    scan = CanvasScan(train, bundle.probe)
    model = UnrolledSweeps(UnrolledSettings(sweeps=2, hidden=4, batch_size=16))
    positions = torch.arange(scan.count)
    loss = scan.loss(model(scan.start(network_train), scan, [positions, positions]), positions)
    loss.backward()
    assert all(float(corrector.head.weight.grad.abs().sum()) > 0 for corrector in model.correctors)
    with torch.no_grad():
        corrector = model.correctors[0]
        corrector.head.bias.fill_(0.5)
        obj = scan.start(network_train)
        correction = corrector(obj, torch.zeros_like(obj), scan.illumination)
    assert torch.all(correction[scan.illumination == 0] == 0) and torch.any(correction != 0)


def test_a_start_from_another_canvas_is_refused(scans):
    train, test, bundle, (network_train, _) = scans
    scan = CanvasScan(test, bundle.probe)
    with pytest.raises(DataError, match="is not this scan's"):
        scan.start(network_train)


def test_refine_runs_the_bundles_learned_sweeps_from_the_better_start(evaluated_run, tmp_path):
    """The shared bundle was trained with model.unrolled_sweeps 3 (conftest): refine's default engine
    runs them from both starts, keeps the lower data error, and explains the patterns better than the network."""
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    paths = dict(refined_path=tmp_path / "refined.npz", history_path=tmp_path / "h.csv", stats_path=tmp_path / "s.json",
                 figure_path=tmp_path / "r.png")
    errors = workflows.refine(test, run.folder / "reconstruction.npz", run.folder / "infer_stats.json", RefineConfig(),
                              bundle_path=run.bundle_path, **paths)
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["iterations"] == len(errors) == 3 and stats["stop_reason"] == "learned sweeps: 3 of 3"
    assert set(stats["trial_errors"]) == {"network", "flat"}
    assert stats["trial_errors"][stats["start"]] == min(stats["trial_errors"].values()) == errors[-1]
    refined = load_reconstruction(tmp_path / "refined.npz")
    network = load_reconstruction(run.folder / "reconstruction.npz")
    assert refined.method == "refined-learned"
    assert data_error(refined, test) < 0.8 * data_error(network, test)
    # the first n of the K steps; more than K is refused, naming the bundle's K
    workflows.refine(test, run.folder / "reconstruction.npz", run.folder / "infer_stats.json", RefineConfig(iterations=2, start="network"),
                     bundle_path=run.bundle_path, **paths)
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["iterations"] == 2 and stats["start"] == "network" and stats["trial_errors"] == {}
    with pytest.raises(ConfigError, match="refine.iterations: 4 learned sweeps asked for, .* has 3"):
        workflows.refine(test, run.folder / "reconstruction.npz", run.folder / "infer_stats.json", RefineConfig(iterations=4),
                         bundle_path=run.bundle_path, **paths)


def test_refine_learned_needs_a_bundle_that_holds_learned_sweeps(evaluated_run, tmp_path):
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    paths = dict(refined_path=tmp_path / "refined.npz", history_path=tmp_path / "h.csv", stats_path=tmp_path / "s.json",
                 figure_path=tmp_path / "r.png")
    arguments = (test, run.folder / "reconstruction.npz", run.folder / "infer_stats.json", RefineConfig())
    with pytest.raises(ConfigError, match="needs the model bundle"):
        workflows.refine(*arguments, **paths)
    architecture = Architecture(N=test.pattern_size, gridsize=1, n_filters_scale=0.125)
    autoencoder, diffraction_to_obj = build_models(architecture, test.probe / np.linalg.norm(test.probe), 1.0)
    save_bundle(tmp_path / "plain.h5.zip", autoencoder, diffraction_to_obj, architecture)
    with pytest.raises(ConfigError, match="holds no learned sweeps"):
        workflows.refine(*arguments, bundle_path=tmp_path / "plain.h5.zip", **paths)
    assert not (tmp_path / "refined.npz").exists()


def test_the_learned_sweeps_travel_in_the_bundle(trained_run):
    bundle = load_bundle(trained_run.bundle_path)
    assert bundle.architecture.unrolled_sweeps == 3 and bundle.architecture.unrolled_hidden == 0
    steps = torch.exp(bundle.diffraction_to_obj.unrolled.log_steps)
    assert not torch.allclose(steps, torch.ones(3))  # trained, not the initial schedule
    assert not any(parameter.requires_grad for parameter in bundle.diffraction_to_obj.unrolled.parameters())
    metrics = trained_run.summary.metrics  # train_metrics.json: the loss of the K steps before and after their training
    for start in ("network", "flat"):
        assert metrics[f"unrolled_loss_last_{start}"] < metrics[f"unrolled_loss_first_{start}"]
    assert metrics["unrolled_wall_time_s"] > 0
