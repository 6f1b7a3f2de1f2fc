"""Inference and evaluation through the workflow functions: train -> save -> load -> infer -> evaluate."""

import json

import numpy as np
import pytest
import torch

from ptycho import inference, workflows
from ptycho.bundle import Bundle
from ptycho.config import InferConfig
from ptycho.data import PtychoDataset, load_dataset
from ptycho.errors import DataError
from ptycho.model import Architecture, build_models
from ptycho.reconstruction import load_reconstruction
from ptycho.rowfile import ScratchRows
from ptycho.stitching import canvas_frame


def test_workflow_integration_reaches_a_quality_floor(evaluated_run):
    run, report = evaluated_run
    assert run.bundle_path.is_file()
    reconstruction = load_reconstruction(run.folder / "reconstruction.npz")
    test = load_dataset(run.test_path)
    assert reconstruction.method == "pinn" and np.all(np.isfinite(reconstruction.object))
    metrics = report["pinn"]
    # Floors measured on this small, 12-epoch run (see the closing note of issue 4); a network
    # that ignores its input (flat output) has Pearson ~0 and fails them.
    assert metrics["amplitude.pearson"] > 0.3
    assert metrics["amplitude.ssim"] > 0.2
    assert metrics["data.r_factor"] < 0.5
    assert json.loads((run.folder / "metrics.json").read_text()) == report
    assert (run.folder / "frc.csv").read_text().startswith("frequency_per_px,pinn")
    # origin convention: the canvas covers every probe-window centre
    x0, y0 = reconstruction.origin
    height, width = reconstruction.object.shape
    assert x0 <= test.xcoords.min() and test.xcoords.max() < x0 + width
    assert y0 <= test.ycoords.min() and test.ycoords.max() < y0 + height


def test_inference_works_without_a_ground_truth(evaluated_run, tmp_path, small_infer_config, small_evaluate_config):
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    blind = PtychoDataset(test.amplitudes, test.xcoords, test.ycoords, test.probe, None, test.scan_index, {})
    workflows.infer(blind, run.bundle_path, small_infer_config, tmp_path / "r.npz", tmp_path / "r.png", tmp_path / "s.json")
    report = workflows.evaluate(blind, {"pinn": tmp_path / "r.npz"}, {}, small_evaluate_config, tmp_path / "m.json", tmp_path / "f.csv", tmp_path / "c.png")
    assert set(report["pinn"]) == {"data.r_factor", "data.normalised_error", "data.n_patterns", "data.own_probe"}
    assert 0 < report["pinn"]["data.r_factor"] < 1


def test_pattern_size_mismatch_is_a_clear_error(evaluated_run, tmp_path, small_infer_config):
    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    wide = PtychoDataset(np.zeros((4, 64, 64), np.float32), test.xcoords[:4] + 16, test.ycoords[:4] + 16, np.ones((64, 64), np.complex64), None, np.arange(4), {})
    with pytest.raises(DataError, match="expects 32 px"):
        workflows.infer(wide, run.bundle_path, small_infer_config, tmp_path / "r.npz", tmp_path / "r.png", tmp_path / "s.json")
    assert not (tmp_path / "r.npz").exists()


def random_scan_and_bundle(count: int, gridsize: int, size: int = 32, extent: tuple[float, float] = (400, 400)):
    """A scan of random amplitudes at random positions and an untrained model (for memory, order and equality checks)."""
    rng = np.random.default_rng(0)
    xcoords, ycoords = rng.uniform(20, extent[0], count), rng.uniform(20, extent[1], count)
    data = PtychoDataset(rng.random((count, size, size), dtype=np.float32), xcoords, ycoords, np.ones((size, size), np.complex64), None, np.arange(count), {})
    architecture = Architecture(size, gridsize, 0.125)
    torch.manual_seed(0)
    autoencoder, diffraction_to_obj = build_models(architecture, data.probe, 1.0)
    bundle = Bundle(autoencoder, diffraction_to_obj, architecture, 1.0, 1.0, data.probe, {}, {"config.json": b'{"model": {"n_neighbours": 7}}'})
    return data, bundle


@pytest.mark.parametrize("gridsize", [1, 2])
def test_large_scan_is_predicted_in_bounded_batches(gridsize, monkeypatch):
    # 3000 positions: the model sees one batch at a time, exactly once per group.
    batch_size = 64
    data, bundle = random_scan_and_bundle(3000, gridsize)
    seen_model = []
    forward = type(bundle.diffraction_to_obj).forward
    monkeypatch.setattr(type(bundle.diffraction_to_obj), "forward", lambda self, a, o: seen_model.append(a.shape[0]) or forward(self, a, o))
    reconstruction = inference.reconstruct(bundle, data, InferConfig(batch_size=batch_size), "bundle")
    assert max(seen_model) <= batch_size and sum(seen_model) == 3000
    assert reconstruction.object.shape == canvas_frame(data.xcoords, data.ycoords, 32)[1]


@pytest.mark.parametrize("gridsize", [1, 2])
def test_patches_kept_in_a_scratch_file_give_the_same_reconstruction_bit_for_bit(gridsize, monkeypatch, tmp_path):
    import ptycho.synchronisation

    monkeypatch.setattr(ptycho.synchronisation, "WINDOW_BOXES", 100)  # several windows, in both runs
    data, bundle = random_scan_and_bundle(500, gridsize, extent=(300, 160))
    in_memory = inference.reconstruct(bundle, data, InferConfig(batch_size=32), "bundle")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    opened = []
    monkeypatch.setattr(inference, "ScratchRows", lambda *a, **k: opened.append(k["folder"]) or ScratchRows(*a, **k))
    on_disk = inference.reconstruct(bundle, data, InferConfig(batch_size=32), "bundle", max_patch_bytes=0, scratch_folder=scratch)
    assert opened == [scratch] and list(scratch.iterdir()) == []  # a scratch file was used, and nothing is left behind
    assert np.array_equal(on_disk.object, in_memory.object) and np.array_equal(on_disk.coverage, in_memory.coverage)
    assert on_disk.origin == in_memory.origin


def test_patterns_read_by_rows_give_the_same_reconstruction(tmp_path):
    from ptycho.data import save_dataset
    from ptycho.rowfile import RowFile

    data, bundle = random_scan_and_bundle(300, 1, extent=(200, 200))
    save_dataset(data, tmp_path / "scan.npz")
    by_rows = load_dataset(tmp_path / "scan.npz", by_rows=True)
    assert isinstance(by_rows.amplitudes, RowFile)
    first = inference.reconstruct(bundle, data, InferConfig(batch_size=32), "bundle")
    second = inference.reconstruct(bundle, by_rows, InferConfig(batch_size=32), "bundle")
    assert np.array_equal(first.object, second.object)


def test_bf16_inference_stays_close_to_fp32(evaluated_run, tmp_path, small_infer_config):
    import dataclasses

    from ptycho.config import InferPrecision

    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    # Both precisions explicit: the pipeline's default (auto) is bf16 on a CPU with native bf16.
    fp32_config = dataclasses.replace(small_infer_config, precision=InferPrecision.FP32)
    workflows.infer(test, run.bundle_path, fp32_config, tmp_path / "f.npz", tmp_path / "f.png", tmp_path / "fs.json")
    fp32 = load_reconstruction(tmp_path / "f.npz")
    bf16_config = dataclasses.replace(small_infer_config, precision=InferPrecision.BF16)
    workflows.infer(test, run.bundle_path, bf16_config, tmp_path / "r.npz", tmp_path / "r.png", tmp_path / "s.json")
    bf16 = load_reconstruction(tmp_path / "r.npz")
    assert bf16.object.dtype == np.complex64 and bf16.object.shape == fp32.object.shape
    covered = fp32.coverage > 0.1 * fp32.coverage.max()
    amplitude = np.abs(fp32.object[covered])
    assert not np.array_equal(bf16.object, fp32.object)  # it did run in another precision
    assert np.max(np.abs(np.abs(bf16.object[covered]) - amplitude)) < 0.03 * amplitude.mean()
    assert np.max(np.abs(np.angle(bf16.object[covered] * np.conj(fp32.object[covered])))) < 0.1


def test_an_unknown_precision_is_refused():
    from ptycho.errors import ConfigError

    with pytest.raises(ConfigError, match="infer.precision"):
        InferConfig(precision="fp16")


def test_canonical_groups_keep_one_patch_per_pattern_and_twin_consensus_reports_its_diagnostics():
    data, _ = random_scan_and_bundle(200, 2, extent=(150, 150))
    architecture = Architecture(32, 2, 0.125, grouping="canonical")
    torch.manual_seed(0)
    autoencoder, diffraction_to_obj = build_models(architecture, data.probe, 1.0)
    bundle = Bundle(autoencoder, diffraction_to_obj, architecture, 1.0, 1.0, data.probe, {}, {})
    placed = []
    place = inference.Stitcher.place
    inference.Stitcher.place, restore = (lambda self, p, x, y: placed.append(len(p)) or place(self, p, x, y)), place
    try:
        diagnostics: dict = {}
        inference.reconstruct(bundle, data, InferConfig(batch_size=64, twin_consensus=True), "bundle", diagnostics=diagnostics)
    finally:
        inference.Stitcher.place = restore
    assert sum(placed) == 2 * 200  # each pattern's seed patch, and its twin
    assert 0.0 <= diagnostics["twin.switched"] <= 1.0 and 0.0 < diagnostics["twin.consensus"] <= 1.0


def test_single_pattern_consistency_lowers_the_data_error_and_is_recorded(evaluated_run, tmp_path):
    from ptycho.bundle import load_bundle
    from ptycho.scoring import data_consistency

    run, _ = evaluated_run
    test = load_dataset(run.test_path)
    bundle = load_bundle(run.bundle_path)
    errors = {k: data_consistency(inference.reconstruct(bundle, test, InferConfig(batch_size=16, consistency_iterations=k), run.bundle_path), test)["r_factor"]
              for k in (0, 30)}
    assert errors[30] < 0.95 * errors[0], errors
    workflows.infer(test, run.bundle_path, InferConfig(consistency_iterations=7), tmp_path / "r.npz", tmp_path / "r.png", tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["consistency_iterations"] == 7
