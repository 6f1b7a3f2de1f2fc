"""The unrolled family (``ptycho.nn.unrolled``): untrained it is plain rPIE, training lowers the
data loss, and the learned part generalises to another scan of the same instrument."""

import numpy as np
import pytest
import torch

from ptycho import physics
from ptycho.bundle import load_bundle
from ptycho.config import BaselineConfig
from ptycho.data import load_dataset
from ptycho.inference import reconstruct
from ptycho.iterative.forward import model_amplitudes
from ptycho.iterative.pie import PieRun
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
    with pytest.raises(ValueError, match="is not this scan's"):
        scan.start(network_train)
